//! One memory-mapped GGUF file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use memmap2::Mmap;

use super::guard::GuardedMap;

use super::parse::{parse_header, Header, TensorInfo};
use super::value::Metadata;
use crate::{Error, Result};

/// A GGUF file mapped into memory; tensor data are zero-copy slices of the mapping.
pub struct GgufFile {
    path: PathBuf,
    map: Arc<GuardedMap>,
    header: Header,
}

impl GgufFile {
    /// Maps and parses `path`. Every tensor's extent is checked against the file size.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        // what is not a regular file is refused before opening it (a FIFO would block
        // the open until a writer came; a directory has no bytes to map)
        let kind = std::fs::metadata(&path).map_err(|source| Error::Io { path: path.clone(), source })?.file_type();
        if kind.is_dir() {
            return Err(Error::Invalid(format!("{}: is a directory, neither a GGUF file nor an expert store (it has no manifest.json)", path.display())));
        }
        if !kind.is_file() {
            return Err(Error::Invalid(format!("{}: is not a regular file (a pipe, socket or device cannot hold a model)", path.display())));
        }
        let file = File::open(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        // SAFETY: the mapping is read-only. A file truncated while it is mapped would raise
        // SIGBUS on reads past its new end: the guard turns that into an error (guard.rs).
        let map = GuardedMap::new(unsafe { Mmap::map(&file) }.map_err(|source| Error::Io { path: path.clone(), source })?);
        let header = parse_header(&map).map_err(|msg| Error::Gguf { path: path.clone(), msg })?;
        Ok(GgufFile { path, map: Arc::new(map), header })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    /// The file's tensor descriptions.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The bytes of a tensor described by this file's header.
    pub fn data(&self, info: &TensorInfo) -> &[u8] {
        // Bounds were validated in `parse_header`.
        &self.map[info.offset as usize..(info.offset + info.size) as usize]
    }

    /// The bytes of a tensor as a shared handle on the mapping (no copy).
    pub fn bytes(&self, info: &TensorInfo) -> Bytes {
        Bytes::from_owner(MapRange { map: self.map.clone(), start: info.offset as usize, end: (info.offset + info.size) as usize })
    }

    /// Size of the file in bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether the file is empty (never true for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A byte range of a shared mapping, so [`Bytes`] handles keep the mapping alive.
pub(crate) struct MapRange {
    pub(crate) map: Arc<GuardedMap>,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl AsRef<[u8]> for MapRange {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}
