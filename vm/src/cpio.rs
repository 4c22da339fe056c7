//! The initramfs: a `newc` cpio archive, as the kernel unpacks it into its first root file
//! system (`Documentation/driver-api/early-userspace/buffer-format.rst`). Uncompressed: the
//! kernel takes it as it is, and the image is written once per run.

use std::collections::BTreeSet;
use std::io::{self, Write};

/// An archive being built: entries in the order they are added, parents first.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    dirs: BTreeSet<String>,
    names: BTreeSet<String>,
    ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl Cpio {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory (and its parents), mode 0755.
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_string());
        self.entry(path, S_IFDIR | 0o755, &[]);
    }

    /// A regular file with `mode` (permission bits); parents are created. A second file at the
    /// same path is refused (the kernel would keep the last; a builder bug either way).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.leaf(path, S_IFREG | (mode & 0o7777), data)
    }

    /// A symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.leaf(path, S_IFLNK | 0o777, target.as_bytes())
    }

    /// Whether `path` is in the archive already.
    pub fn contains(&self, path: &str) -> bool {
        let p = path.trim_matches('/');
        self.names.contains(p) || self.dirs.contains(p)
    }

    fn leaf(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let path = path.trim_matches('/');
        if !self.names.insert(path.to_string()) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{path} is in the initramfs twice")));
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(path, mode, data);
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [self.ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// The archive with its trailer.
    pub fn finish(mut self, w: &mut impl Write) -> io::Result<()> {
        self.entry("TRAILER!!!", 0, &[]);
        w.write_all(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(h: &[u8], i: usize) -> u32 {
        u32::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap()
    }

    #[test]
    fn entries_are_newc_aligned_with_parents_first() {
        let mut c = Cpio::new();
        c.file("a/b/c.txt", 0o644, b"hello").unwrap();
        c.symlink("a/l", "b/c.txt").unwrap();
        let mut out = Vec::new();
        c.finish(&mut out).unwrap();
        let mut at = 0;
        let mut seen = Vec::new();
        while at < out.len() {
            let h = &out[at..];
            assert_eq!(&h[..6], b"070701");
            let (mode, size, namesize) = (field(h, 1), field(h, 6) as usize, field(h, 11) as usize);
            let name = std::str::from_utf8(&h[110..110 + namesize - 1]).unwrap().to_string();
            let data_at = (110 + namesize).next_multiple_of(4);
            let data = &h[data_at..data_at + size];
            seen.push((name.clone(), mode, data.to_vec()));
            at += (data_at + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                break;
            }
        }
        assert_eq!(at, out.len());
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(names, ["a", "a/b", "a/b/c.txt", "a/l", "TRAILER!!!"]);
        assert_eq!(seen[2].1, S_IFREG | 0o644);
        assert_eq!(seen[2].2, b"hello");
        assert_eq!(seen[3].1, S_IFLNK | 0o777);
        assert_eq!(seen[3].2, b"b/c.txt");
    }

    #[test]
    fn a_path_twice_is_refused() {
        let mut c = Cpio::new();
        c.file("x", 0o755, b"1").unwrap();
        let e = c.file("/x", 0o755, b"2").unwrap_err();
        assert!(e.to_string().contains("x is in the initramfs twice"), "{e}");
    }
}
