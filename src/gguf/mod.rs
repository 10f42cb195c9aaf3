//! GGUF model files: reader, metadata, and split models that load as one.
//!
//! A model is one `.gguf` file or a set of `NAME-0000i-of-0000N.gguf` shards written by
//! `gguf-split`; [`GgufModel::open`] accepts either (any shard names the whole set).

mod file;
mod guard;
mod parse;
mod value;

pub use file::GgufFile;
pub(crate) use file::MapRange;
pub(crate) use guard::GuardedMap;
pub use guard::file_changed;
pub use parse::{parse_header, Header, TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
pub use value::{Metadata, Value};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A whole model: one or more GGUF files, with one metadata view and one tensor namespace.
pub struct GgufModel {
    files: Vec<GgufFile>,
    index: HashMap<String, (usize, usize)>,
}

impl GgufModel {
    /// Opens a model file; split models are found from any of their shards.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let first = GgufFile::open(path)?;
        let count = first.metadata().get_u64("split.count").unwrap_or(1);
        let files = if count > 1 {
            let paths = split_paths(path, count)?;
            let mut files = Vec::with_capacity(paths.len());
            for (i, p) in paths.iter().enumerate() {
                let f = if p == path { GgufFile::open(p)? } else {
                    GgufFile::open(p).map_err(|e| match e {
                        Error::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => Error::model(format!(
                            "split model: shard {} of {count} is missing ({})",
                            i + 1,
                            path.display()
                        )),
                        other => other,
                    })?
                };
                let no = f.metadata().get_u64("split.no").unwrap_or(i as u64);
                if no != i as u64 {
                    return Err(Error::model(format!(
                        "split model: {} says it is shard {} but its name says {}",
                        p.display(),
                        no + 1,
                        i + 1
                    )));
                }
                files.push(f);
            }
            files
        } else {
            vec![first]
        };
        Self::from_files(files)
    }

    fn from_files(files: Vec<GgufFile>) -> Result<Self> {
        let mut index = HashMap::new();
        for (fi, f) in files.iter().enumerate() {
            for (ti, t) in f.tensors().iter().enumerate() {
                if index.insert(t.name.clone(), (fi, ti)).is_some() {
                    return Err(Error::model(format!("tensor {:?} appears in more than one shard", t.name)));
                }
            }
        }
        if let Some(expected) = files[0].metadata().get_u64("split.tensors.count") {
            if expected != index.len() as u64 {
                return Err(Error::model(format!(
                    "split model: shards hold {} tensors but split.tensors.count says {expected}",
                    index.len()
                )));
            }
        }
        Ok(GgufModel { files, index })
    }

    /// The model's metadata (from the first shard, which carries it all).
    pub fn metadata(&self) -> &Metadata {
        self.files[0].metadata()
    }

    /// The files that make up the model.
    pub fn files(&self) -> &[GgufFile] {
        &self.files
    }

    /// Looks a tensor up by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&(f, t)| &self.files[f].tensors()[t])
    }

    /// A tensor's description and the index (in [`GgufModel::files`]) of the shard holding it.
    pub fn tensor_location(&self, name: &str) -> Option<(usize, &TensorInfo)> {
        self.index.get(name).map(|&(f, t)| (f, &self.files[f].tensors()[t]))
    }

    /// A tensor's description and its bytes.
    pub fn tensor_data(&self, name: &str) -> Option<(&TensorInfo, &[u8])> {
        let &(f, t) = self.index.get(name)?;
        let info = &self.files[f].tensors()[t];
        Some((info, self.files[f].data(info)))
    }

    /// A tensor's description and a shared, zero-copy handle on its bytes.
    pub fn tensor_bytes(&self, name: &str) -> Option<(&TensorInfo, bytes::Bytes)> {
        let &(f, t) = self.index.get(name)?;
        let info = &self.files[f].tensors()[t];
        Some((info, self.files[f].bytes(info)))
    }

    /// Every tensor in the model, shard by shard, in file order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.files.iter().flat_map(|f| f.tensors().iter())
    }

    /// Total size of the files in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len()).sum()
    }
}

/// The shard paths of a split model, from the path of any shard:
/// `PREFIX-%05d-of-%05d.gguf`.
fn split_paths(path: &Path, count: u64) -> Result<Vec<PathBuf>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let stem = name.strip_suffix(".gguf").unwrap_or(name);
    let suffix = format!("-of-{count:05}");
    let prefix = stem
        .strip_suffix(&suffix)
        .and_then(|s| s.get(..s.len().checked_sub(6)?).filter(|_| s.as_bytes()[s.len() - 6] == b'-'))
        .ok_or_else(|| {
            Error::model(format!(
                "{} is one of {count} shards but its name does not end in -NNNNN{suffix}.gguf",
                path.display()
            ))
        })?;
    let dir = path.parent().unwrap_or(Path::new(""));
    Ok((1..=count).map(|i| dir.join(format!("{prefix}-{i:05}{suffix}.gguf"))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names() {
        let p = split_paths(Path::new("/m/kimi-Q4_K_M-00002-of-00003.gguf"), 3).unwrap();
        assert_eq!(p[0], Path::new("/m/kimi-Q4_K_M-00001-of-00003.gguf"));
        assert_eq!(p[2], Path::new("/m/kimi-Q4_K_M-00003-of-00003.gguf"));
        assert!(split_paths(Path::new("/m/model.gguf"), 3).is_err());
    }
}
