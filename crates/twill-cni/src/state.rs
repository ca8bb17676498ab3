//! The rendered delegate config, kept per container so DEL works with exactly what ADD
//! used, even after subnet.env changed or vanished.

use std::path::{Path, PathBuf};

use crate::error::{code, CniError};

/// A container ID becomes a file name: refuse anything that could escape the directory.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let bad = id.is_empty()
        || id == "."
        || id == ".."
        || id.contains('/')
        || id.contains('\0')
        || id.contains("..")
        || id.len() > 255;
    if bad {
        return Err(CniError::new(
            code::INVALID_ENV,
            "invalid CNI_CONTAINERID",
            format!("{id:?} cannot be used as a file name"),
        ));
    }
    Ok(())
}

pub fn path(data_dir: &str, container_id: &str) -> PathBuf {
    Path::new(data_dir).join(container_id)
}

pub fn save(data_dir: &str, container_id: &str, conf: &[u8]) -> Result<(), CniError> {
    let p = path(data_dir, container_id);
    twill_config::write_atomic(&p, conf, 0o600)
        .map_err(|e| CniError::new(code::IO, format!("saving {}", p.display()), e.to_string()))
}

/// `None` when there is no state (DEL of an unknown container is not an error).
pub fn load(data_dir: &str, container_id: &str) -> Result<Option<Vec<u8>>, CniError> {
    let p = path(data_dir, container_id);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::new(
            code::IO,
            format!("reading {}", p.display()),
            e.to_string(),
        )),
    }
}

pub fn remove(data_dir: &str, container_id: &str) -> Result<(), CniError> {
    let p = path(data_dir, container_id);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CniError::new(
            code::IO,
            format!("removing {}", p.display()),
            e.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_that_escape_are_refused() {
        for bad in ["", ".", "..", "../etc/passwd", "a/b", "a\0b", "x..y"] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
        for good in ["abc123", "k8s_pod-1.2", &"f".repeat(64)] {
            assert!(validate_container_id(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn save_load_remove() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state").display().to_string();
        assert_eq!(load(&dir, "c1").unwrap(), None);
        save(&dir, "c1", b"{}").unwrap();
        assert_eq!(load(&dir, "c1").unwrap().unwrap(), b"{}");
        let mode = std::fs::metadata(path(&dir, "c1"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        remove(&dir, "c1").unwrap();
        remove(&dir, "c1").unwrap();
        assert_eq!(load(&dir, "c1").unwrap(), None);
    }
}
