//! The pin directory: where the maps live while `inspector attach` runs, so
//! that `inspector stats` (another process) can read them.
//!
//! Layout: `<pin-dir>/<MAP_NAME>` for every map. The directory itself is
//! `flock`ed by the running `attach`, which serialises instances: bpffs cannot
//! hold regular files, but a directory fd can carry a lock.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use rustix::{
    fs::{flock, statfs, FlockOperation, FsWord},
    io::Errno,
    mount::{mount, unmount, MountFlags, UnmountFlags},
};

/// Default pin directory, the normal place on a host.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/inspector";

/// `f_type` of a bpf filesystem (BPF_FS_MAGIC in linux/magic.h).
const BPF_FS_MAGIC: FsWord = 0xcafe_4a11;

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|st| st.f_type == BPF_FS_MAGIC)
}

fn mount_bpffs(at: &Path) -> Result<()> {
    mount("bpf", at, "bpf", MountFlags::empty(), None)
        .with_context(|| format!("mounting a bpf filesystem at {}", at.display()))
}

/// Takes the instance lock on an open pin dir without waiting: `Ok(false)`
/// when another process holds it.
fn try_lock(dir: &File, path: &Path) -> Result<bool> {
    match flock(dir, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// A prepared, locked pin directory. Dropping it releases the lock.
pub struct PinDir {
    path: PathBuf,
    /// The mount we made ourselves, if any (undone by [`PinDir::remove`]).
    mounted: Option<PathBuf>,
    _lock: File,
}

impl PinDir {
    /// Makes sure `path` exists on a bpffs (mounting one if none is there, as
    /// `ip netns exec` leaves none) and takes the instance lock.
    pub fn prepare(path: &Path) -> Result<Self> {
        let mut mounted = None;
        if !is_bpffs(path) {
            // The normal layout is a folder under /sys/fs/bpf: mount the
            // standard bpffs there when it is missing; otherwise mount one on
            // the pin dir itself.
            let parent = path.parent().filter(|p| *p == Path::new("/sys/fs/bpf"));
            let at = match parent {
                Some(p) if p.is_dir() && !is_bpffs(p) => p.to_path_buf(),
                _ => path.to_path_buf(),
            };
            std::fs::create_dir_all(&at)
                .with_context(|| format!("creating pin dir {}", at.display()))?;
            if !is_bpffs(&at) {
                mount_bpffs(&at)?;
                if at == path {
                    mounted = Some(at);
                }
            }
        }
        std::fs::create_dir_all(path)
            .with_context(|| format!("creating pin dir {}", path.display()))?;
        if !is_bpffs(path) {
            bail!("pin dir {} is not on a bpf filesystem", path.display());
        }
        let lock = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        if !try_lock(&lock, path)? {
            bail!(
                "pin dir {} is in use by another running `inspector attach`; stop it first, \
                 or pass a different --pin-dir",
                path.display()
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            mounted,
            _lock: lock,
        })
    }

    /// Locks an existing pin dir (for `detach`): fails if an `attach` runs.
    pub fn lock_existing(path: &Path) -> Result<Self> {
        let lock = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        if !try_lock(&lock, path)? {
            bail!(
                "an `inspector attach` is running with pin dir {}: stop it (SIGTERM) instead; \
                 without --persist it detaches on its own",
                path.display()
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            mounted: None,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the pins named in `names`, then the folder (and our mount).
    pub fn remove(self, names: &[&str]) -> Result<()> {
        for n in names {
            let p = self.path.join(n);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing pin {}", p.display())),
            }
        }
        // Links left pinned (an interface not attached this time).
        for e in crate::links::pinned(&self.path)? {
            crate::links::remove(&e.path)?;
        }
        let links = self.path.join(crate::links::LINKS_DIR);
        match std::fs::remove_dir(&links) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", links.display())),
        }
        if let Some(m) = &self.mounted {
            unmount(m, UnmountFlags::DETACH)
                .with_context(|| format!("unmounting {}", m.display()))?;
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing pin dir {}", self.path.display())),
        }
    }
}

/// Opens the map `name` pinned under `pin_dir`. `what` names it in the
/// error when it is not there, which almost always means that no `attach`
/// runs with that pin dir.
pub fn open_map(pin_dir: &Path, name: &str, what: &str) -> Result<aya::maps::MapData> {
    let path = pin_dir.join(name);
    if !path.exists() {
        bail!(
            "no {what} at {}: is `inspector attach` running with --pin-dir {}?",
            path.display(),
            pin_dir.display()
        );
    }
    aya::maps::MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))
}
