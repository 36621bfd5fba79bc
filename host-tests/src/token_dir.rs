//! A kubelet-style projected volume directory, rotated exactly like kubelet's AtomicWriter:
//!
//! ```text
//! dir/..2026_11_23_17_55_34.123456789/{token,sds.yaml}   the data of one generation
//! dir/..data -> ..2026_11_23_17_55_34.123456789           swapped atomically (rename of ..data_tmp)
//! dir/token -> ..data/token                               stable user-visible names
//! dir/sds.yaml -> ..data/sds.yaml
//! ```
//!
//! Envoy's file-based SDS watches the directory and only notices a rotation done this way (a
//! `..data` symlink swap); an in-place rewrite is not picked up — so tests must rotate like kubelet.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::clock::utc_parts;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

pub struct TokenDir {
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl TokenDir {
    /// Uses (and creates) `root`.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(TokenDir { root, _temp: None })
    }

    /// A directory in the system temp dir, removed on drop.
    pub fn temp() -> io::Result<Self> {
        let t = tempfile::Builder::new()
            .prefix("metrics-gate-token-")
            .tempdir()?;
        Ok(TokenDir {
            root: t.path().to_path_buf(),
            _temp: Some(t),
        })
    }

    /// The volume's directory (what Envoy's `watched_directory` points at).
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The user-visible path of `name` (a symlink into `..data`).
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.file(name))
    }

    /// The current data directory's name (`..<timestamp>`), if written.
    pub fn current_generation(&self) -> Option<String> {
        fs::read_link(self.root.join(DATA))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    /// Replaces the whole payload with `files` (flat names), atomically, like kubelet.
    pub fn write(&self, files: &[(&str, &[u8])]) -> io::Result<()> {
        for (name, _) in files {
            if name.is_empty() || name.contains('/') || name.starts_with("..") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("bad file name {name:?}"),
                ));
            }
        }
        let old_ts = self.current_generation();
        let old_names = old_ts
            .as_ref()
            .map(|ts| list_names(&self.root.join(ts)))
            .transpose()?
            .unwrap_or_default();

        // 1. the new generation
        let ts_name = new_ts_name();
        let ts_dir = self.root.join(&ts_name);
        fs::create_dir(&ts_dir)?;
        fs::set_permissions(&ts_dir, fs::Permissions::from_mode(0o755))?;
        for (name, content) in files {
            let p = ts_dir.join(name);
            fs::write(&p, content)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644))?;
        }
        // 2. ..data_tmp -> new generation, renamed over ..data (the atomic step)
        let tmp = self.root.join(DATA_TMP);
        let _ = fs::remove_file(&tmp);
        symlink(&ts_name, &tmp)?;
        fs::rename(&tmp, self.root.join(DATA))?;
        // 3. user-visible symlinks for new names, removal of names that disappeared
        let new_names: BTreeSet<String> = files.iter().map(|(n, _)| n.to_string()).collect();
        for name in &new_names {
            let link = self.root.join(name);
            if fs::symlink_metadata(&link).is_err() {
                symlink(Path::new(DATA).join(name), &link)?;
            }
        }
        for name in old_names.difference(&new_names) {
            let _ = fs::remove_file(self.root.join(name));
        }
        // 4. the old generation
        if let Some(old) = old_ts {
            if old != ts_name {
                fs::remove_dir_all(self.root.join(old))?;
            }
        }
        Ok(())
    }
}

fn list_names(dir: &Path) -> io::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for e in fs::read_dir(dir)? {
        out.insert(e?.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}

/// `..2006_01_02_15_04_05.<suffix>` like kubelet (`os.MkdirTemp` with a time-formatted prefix); the
/// suffix is nanoseconds plus a counter so two rotations in the same second differ.
fn new_ts_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let p = utc_parts(SystemTime::now());
    format!(
        "..{:04}_{:02}_{:02}_{:02}_{:02}_{:02}.{:09}{}",
        p.year,
        p.month,
        p.day,
        p.hour,
        p.minute,
        p.second,
        p.nanos,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_rotation_match_kubelet() {
        let d = TokenDir::temp().unwrap();
        d.write(&[("token", b"one"), ("sds.yaml", b"resources: []\n")])
            .unwrap();
        let gen1 = d.current_generation().unwrap();
        assert!(gen1.starts_with("..20"), "{gen1}");
        assert_eq!(
            fs::read_link(d.file("token")).unwrap(),
            Path::new("..data/token")
        );
        assert_eq!(
            fs::read_link(d.file("sds.yaml")).unwrap(),
            Path::new("..data/sds.yaml")
        );
        assert_eq!(d.read("token").unwrap(), b"one");

        d.write(&[("token", b"two"), ("sds.yaml", b"resources: []\n")])
            .unwrap();
        let gen2 = d.current_generation().unwrap();
        assert_ne!(gen1, gen2);
        assert_eq!(d.read("token").unwrap(), b"two");
        assert!(!d.path().join(&gen1).exists(), "old generation removed");
        assert!(!d.path().join(DATA_TMP).exists());
        // The user-visible symlink itself is untouched by a rotation: only ..data moves.
        assert_eq!(
            fs::read_link(d.file("token")).unwrap(),
            Path::new("..data/token")
        );

        // Dropping a file removes its symlink.
        d.write(&[("token", b"three")]).unwrap();
        assert!(fs::symlink_metadata(d.file("sds.yaml")).is_err());
        let mut entries: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        assert_eq!(entries.len(), 3, "{entries:?}"); // ..<ts>, ..data, token
        assert!(d.write(&[("../x", b"")]).is_err());
    }
}
