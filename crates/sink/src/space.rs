//! How much room is left on the output file system.

use std::path::Path;

/// Free room on a file system, as an unprivileged process may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes available to unprivileged users (`f_bavail × f_frsize`).
    pub free_bytes: u64,
    /// Inodes (files and directories) that can still be created
    /// (`f_favail`). On file systems that have no fixed inode table and so
    /// report no inode counts at all (btrfs, many FUSE and network file
    /// systems report `f_files == 0`) this is `u64::MAX`, meaning "no
    /// limit known". File systems that allocate inodes dynamically (XFS,
    /// tmpfs) report a large, shifting estimate instead; treat any figure
    /// as a hint, not a promise.
    pub free_inodes: u64,
}

/// `statvfs(2)` of the file system holding `path`.
pub fn free_space(path: &Path) -> std::io::Result<Space> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frsize = match st.fragment_size() {
        0 => st.block_size(),
        n => n,
    } as u64;
    let free_bytes = (st.blocks_available() as u64).saturating_mul(frsize);
    let free_inodes = if st.files() == 0 {
        u64::MAX
    } else {
        st.files_available() as u64
    };
    Ok(Space {
        free_bytes,
        free_inodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_directory_has_room() {
        let tmp = tempfile::tempdir().unwrap();
        let space = free_space(tmp.path()).unwrap();
        assert!(space.free_bytes > 0);
        assert!(space.free_inodes > 0);
    }

    #[test]
    fn a_missing_path_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(free_space(&tmp.path().join("missing")).is_err());
    }
}
