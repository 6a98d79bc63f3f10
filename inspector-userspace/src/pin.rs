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

/// Folder inside the pin dir that records what `attach` made, so that the
/// last one to leave (a later `attach`, or `detach`, after `--persist`)
/// removes exactly that and nothing the operator made: `mounted` if it
/// mounted the bpffs on the pin dir, `dirs_N` if it created the pin dir and
/// the N-1 folders above it. (bpffs holds folders but no files, and no
/// names with a dot.)
pub const MADE_DIR: &str = "made_by_inspector";
const MADE_MOUNT: &str = "mounted";
const MADE_DIRS: &str = "dirs_";

/// A prepared, locked pin directory. Dropping it releases the lock.
pub struct PinDir {
    path: PathBuf,
    _lock: File,
}

/// Creates `path` and the missing folders above it; returns how many it
/// created (0 if `path` existed).
fn create_dirs(path: &Path) -> Result<usize> {
    let missing = path.ancestors().take_while(|p| !p.exists()).count();
    std::fs::create_dir_all(path)
        .with_context(|| format!("creating pin dir {}", path.display()))?;
    Ok(missing)
}

/// What the marks in `path` say: (mounted by us, folders we created).
fn read_marks(path: &Path) -> (bool, usize) {
    let dir = path.join(MADE_DIR);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return (false, 0);
    };
    let (mut mounted, mut made) = (false, 0);
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == MADE_MOUNT {
            mounted = true;
        } else if let Some(n) = name.strip_prefix(MADE_DIRS).and_then(|n| n.parse().ok()) {
            made = n;
        }
    }
    (mounted, made)
}

fn write_marks(path: &Path, mounted: bool, made: usize) -> Result<()> {
    if !mounted && made == 0 {
        return Ok(());
    }
    let dir = path.join(MADE_DIR);
    let mut names = Vec::new();
    if mounted {
        names.push(MADE_MOUNT.to_string());
    }
    if made > 0 {
        names.push(format!("{MADE_DIRS}{made}"));
    }
    for n in names {
        std::fs::create_dir_all(dir.join(&n))
            .with_context(|| format!("creating {}", dir.join(&n).display()))?;
    }
    Ok(())
}

fn remove_marks(path: &Path) -> Result<()> {
    let dir = path.join(MADE_DIR);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in rd.flatten() {
        std::fs::remove_dir(e.path())
            .with_context(|| format!("removing {}", e.path().display()))?;
    }
    std::fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))
}

impl PinDir {
    /// Makes sure `path` exists on a bpffs (mounting one if none is there, as
    /// `ip netns exec` leaves none) and takes the instance lock. What it
    /// creates or mounts is recorded in the pin dir ([`MADE_DIR`]) for
    /// [`PinDir::remove`]; an existing folder or mount is used as it is.
    pub fn prepare(path: &Path) -> Result<Self> {
        let (mut mounted, mut made) = (false, 0);
        // A pin dir still to be created is on the filesystem of the
        // nearest folder above it that exists.
        let existing = path.ancestors().find(|p| p.exists()).unwrap_or(path);
        if !is_bpffs(existing) {
            // The normal layout is a folder under /sys/fs/bpf: mount the
            // standard bpffs there when it is missing (and leave it, as
            // systemd would have mounted it); otherwise mount one on the pin
            // dir itself.
            let std_root = path
                .parent()
                .filter(|p| *p == Path::new("/sys/fs/bpf") && p.is_dir() && !is_bpffs(p));
            match std_root {
                Some(root) => {
                    mount_bpffs(root)?;
                    log::info!("mounted a bpf filesystem at {}", root.display());
                }
                None => {
                    made = create_dirs(path)?;
                    mount_bpffs(path)?;
                    mounted = true;
                    log::info!(
                        "mounted a bpf filesystem at {} (unmounted by the last instance to stop)",
                        path.display()
                    );
                }
            }
        }
        if !path.exists() {
            made = create_dirs(path)?;
        }
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
        write_marks(path, mounted, made)?;
        Ok(Self {
            path: path.to_path_buf(),
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
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the pins named in `names` and the links, then what the
    /// inspector made for the pin dir (its mount, the folders it created),
    /// and nothing else: a folder or a mount the operator made stays, and
    /// so does anything else the operator put in it.
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
        let (mounted, made) = read_marks(&self.path);
        remove_marks(&self.path)?;
        if mounted {
            unmount(&self.path, UnmountFlags::DETACH)
                .with_context(|| format!("unmounting {}", self.path.display()))?;
        }
        // The folders we created, deepest first, each only if empty: what
        // the operator put there since stays, with the folders holding it.
        for dir in self.path.ancestors().take(made) {
            if let Err(e) = std::fs::remove_dir(dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!(
                        "left {} in place: {e} (it holds something the inspector did not put there)",
                        dir.display()
                    );
                    break;
                }
            }
        }
        Ok(())
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
