//! The expert store: a model converted for paging.
//!
//! ```text
//! DIR/manifest.json        format, source file size and SHA-256, the GGUF metadata, and
//!                          per layer: expert file, record size, projection types/shapes,
//!                          a CRC-32 per expert record
//! DIR/base.safetensors     every non-expert tensor, GGUF blocks kept as they are (dtype U8;
//!                          the GGUF type and dims in the safetensors metadata)
//! DIR/experts-LLL.bin      layer LLL's routed experts: record e at e * record_bytes holds
//!                          gate | up | down, records aligned to 64 KiB
//! ```
//!
//! Conversion streams tensor by tensor (memory stays flat), writes into `DIR.partial` and
//! renames it to `DIR` only when complete; an existing `DIR` is never touched.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::gguf::{GgufModel, GuardedMap, MapRange, Metadata, Value};
use crate::model::source::{TensorMeta, TensorSource};
use crate::quant::GgmlType;
use crate::{Error, Result};

/// Alignment of expert records in the expert files.
pub const RECORD_ALIGN: u64 = 64 * 1024;
const FORMAT: &str = "odmoe-expert-store";
const VERSION: u32 = 1;

/// Type and shape of one projection of every expert of a layer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProjectionInfo {
    /// GGML type name.
    pub ty: String,
    /// Output rows.
    pub rows: usize,
    /// Input columns.
    pub cols: usize,
    /// Bytes of one expert's projection.
    pub bytes: u64,
}

/// One layer's expert file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerExperts {
    /// Layer index.
    pub layer: usize,
    /// File name inside the store.
    pub file: String,
    /// Experts in the layer.
    pub n_expert: usize,
    /// Distance between records (a multiple of [`RECORD_ALIGN`]).
    pub record_bytes: u64,
    /// Gate projection.
    pub gate: ProjectionInfo,
    /// Up projection.
    pub up: ProjectionInfo,
    /// Down projection.
    pub down: ProjectionInfo,
    /// CRC-32 of each record's gate|up|down bytes (padding excluded).
    pub crc32: Vec<u32>,
}

impl LayerExperts {
    /// Checks what the manifest says of this layer's file against itself (the file's
    /// name, the records' size, the checksums' count); returns the bytes the file must
    /// hold. What the records hold is checked against the model elsewhere.
    pub fn check(&self) -> Result<u64> {
        let layer = self.layer;
        // a file name inside the store: no directories, no way out of it
        if self.file.is_empty() || self.file.contains(['/', '\\']) || self.file == "." || self.file == ".." {
            return Err(Error::model(format!("store: layer {layer}: expert file {:?} is not a file name inside the store", self.file)));
        }
        if self.crc32.len() != self.n_expert {
            return Err(Error::model(format!("store: layer {layer}: the manifest lists {} checksums for {} experts", self.crc32.len(), self.n_expert)));
        }
        // each record holds the three projections, padded to a whole alignment unit
        let data = self.gate.bytes.checked_add(self.up.bytes).and_then(|b| b.checked_add(self.down.bytes));
        if data.is_none_or(|d| self.record_bytes < d || !self.record_bytes.is_multiple_of(RECORD_ALIGN)) {
            return Err(Error::model(format!(
                "store: layer {layer}: records of {} bytes cannot hold the experts' {} bytes of projections (records are whole multiples of {RECORD_ALIGN} bytes)",
                self.record_bytes,
                data.map_or("too many".to_string(), |d| d.to_string()),
            )));
        }
        self.record_bytes.checked_mul(self.n_expert as u64).ok_or_else(|| Error::model(format!("store: layer {layer}: {} records of {} bytes overflow", self.n_expert, self.record_bytes)))
    }
}

impl Manifest {
    /// Parses a manifest and checks what it says of itself: its format and version, the
    /// metadata's typed values, and each layer ([`LayerExperts::check`]).
    pub fn parse(text: &[u8]) -> Result<(Manifest, Metadata)> {
        let manifest: Manifest = serde_json::from_slice(text).map_err(|e| Error::model(format!("not a valid manifest: {e}")))?;
        if manifest.format != FORMAT || manifest.version != VERSION {
            return Err(Error::model(format!("format {} v{} is not supported (expected {FORMAT} v{VERSION})", manifest.format, manifest.version)));
        }
        let mut metadata = Metadata::default();
        for (k, v) in &manifest.metadata {
            metadata.push(k.clone(), json_to_value(v)?);
        }
        for le in &manifest.layers {
            le.check()?;
        }
        Ok((manifest, metadata))
    }
}

/// The store's manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Always "odmoe-expert-store".
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Source file names, total size and SHA-256 of their bytes in order.
    pub source: SourceInfo,
    /// The GGUF metadata, with types kept.
    pub metadata: Vec<(String, serde_json::Value)>,
    /// Expert files, one per layer with experts.
    pub layers: Vec<LayerExperts>,
    /// CRC-32 of `base.safetensors`, checked when the store is opened (absent from stores
    /// written before it was added: those are opened unchecked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_crc32: Option<u32>,
}

/// What the store was converted from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceInfo {
    /// File names (one, or the shards of a split model).
    pub files: Vec<String>,
    /// Total bytes.
    pub bytes: u64,
    /// SHA-256 over all files' bytes in order, hex.
    pub sha256: String,
}

fn expert_tensor(name: &str) -> Option<(usize, &'static str)> {
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    let proj = match tail {
        "ffn_gate_exps.weight" => "gate",
        "ffn_up_exps.weight" => "up",
        "ffn_down_exps.weight" => "down",
        _ => return None,
    };
    Some((layer, proj))
}

fn value_to_json(v: &Value) -> serde_json::Value {
    use serde_json::json;
    let (t, x) = match v {
        Value::U8(x) => ("u8", json!(x)),
        Value::I8(x) => ("i8", json!(x)),
        Value::U16(x) => ("u16", json!(x)),
        Value::I16(x) => ("i16", json!(x)),
        Value::U32(x) => ("u32", json!(x)),
        Value::I32(x) => ("i32", json!(x)),
        Value::U64(x) => ("u64", json!(x)),
        Value::I64(x) => ("i64", json!(x)),
        Value::F32(x) => ("f32", json!(x)),
        Value::F64(x) => ("f64", json!(x)),
        Value::Bool(x) => ("bool", json!(x)),
        Value::String(x) => ("str", json!(x)),
        Value::Array(a) => ("array", serde_json::Value::Array(a.iter().map(value_to_json).collect())),
    };
    json!({ "t": t, "v": x })
}

fn json_to_value(j: &serde_json::Value) -> Result<Value> {
    let bad = || Error::model(format!("store manifest: bad metadata value {j}"));
    let t = j["t"].as_str().ok_or_else(bad)?;
    let v = &j["v"];
    let int = || v.as_i64().ok_or_else(bad);
    let uint = || v.as_u64().ok_or_else(bad);
    Ok(match t {
        "u8" => Value::U8(uint()? as u8),
        "i8" => Value::I8(int()? as i8),
        "u16" => Value::U16(uint()? as u16),
        "i16" => Value::I16(int()? as i16),
        "u32" => Value::U32(uint()? as u32),
        "i32" => Value::I32(int()? as i32),
        "u64" => Value::U64(uint()?),
        "i64" => Value::I64(int()?),
        "f32" => Value::F32(v.as_f64().ok_or_else(bad)? as f32),
        "f64" => Value::F64(v.as_f64().ok_or_else(bad)?),
        "bool" => Value::Bool(v.as_bool().ok_or_else(bad)?),
        "str" => Value::String(v.as_str().ok_or_else(bad)?.to_string()),
        "array" => Value::Array(v.as_array().ok_or_else(bad)?.iter().map(json_to_value).collect::<Result<_>>()?),
        _ => return Err(bad()),
    })
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Converts a GGUF model into a store at `out`. `progress(done, total)` is called as bytes
/// are written. Refuses if `out` exists; a leftover `out.partial` from an interrupted run
/// is removed and the conversion starts over.
pub fn convert(g: &GgufModel, out: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
    if out.exists() {
        return Err(Error::Invalid(format!("{} already exists; remove it or choose another output", out.display())));
    }
    let tmp = PathBuf::from(format!("{}.partial", out.display()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let total: u64 = g.tensors().map(|t| t.size).sum::<u64>() + g.file_bytes();
    let mut done = 0u64;

    // 1. base tensors, blocks as they are
    let mut base: Vec<(String, Bytes)> = Vec::new();
    let mut info: HashMap<String, String> = HashMap::new();
    let mut experts: HashMap<usize, HashMap<&'static str, (TensorMeta, Bytes)>> = HashMap::new();
    for t in g.tensors() {
        let (_, data) = g.tensor_bytes(&t.name).expect("listed");
        if let Some((layer, proj)) = expert_tensor(&t.name) {
            experts.entry(layer).or_default().insert(proj, (TensorMeta { ty: t.ggml_type, dims: t.dims.clone() }, data));
        } else {
            let dims: Vec<String> = t.dims.iter().map(u64::to_string).collect();
            info.insert(t.name.clone(), format!("{}:{}", t.ggml_type.name(), dims.join(",")));
            base.push((t.name.clone(), data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = base
        .iter()
        .map(|(n, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![b.len()], b).expect("u8 view")))
        .collect();
    let base_path = tmp.join("base.safetensors");
    safetensors::tensor::serialize_to_file(views, Some(info), &base_path).map_err(|e| Error::model(format!("writing {}: {e}", base_path.display())))?;
    let base_crc32 = Some(file_crc32(&base_path)?);
    done += base.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
    progress(done, total);

    // 2. expert files, one record per expert
    let mut layers_out = Vec::new();
    let mut layer_ids: Vec<usize> = experts.keys().copied().collect();
    layer_ids.sort();
    for layer in layer_ids {
        let p = &experts[&layer];
        let (Some(gate), Some(up), Some(down)) = (p.get("gate"), p.get("up"), p.get("down")) else {
            return Err(Error::model(format!("layer {layer}: gate, up and down expert tensors are not all present")));
        };
        let n_expert = *gate.0.dims.get(2).ok_or_else(|| Error::model(format!("layer {layer}: expert tensors are not 3-D")))? as usize;
        let pinfo = |m: &(TensorMeta, Bytes)| ProjectionInfo { ty: m.0.ty.name().to_string(), rows: m.0.dims[1] as usize, cols: m.0.dims[0] as usize, bytes: m.1.len() as u64 / n_expert as u64 };
        let (gi, ui, di) = (pinfo(gate), pinfo(up), pinfo(down));
        let rec = gi.bytes + ui.bytes + di.bytes;
        let record_bytes = rec.div_ceil(RECORD_ALIGN) * RECORD_ALIGN;
        let name = format!("experts-{layer:03}.bin");
        let path = tmp.join(&name);
        let mut w = BufWriter::with_capacity(4 << 20, File::create(&path).map_err(io(&path))?);
        let pad = vec![0u8; (record_bytes - rec) as usize];
        let mut crcs = Vec::with_capacity(n_expert);
        for e in 0..n_expert {
            let mut crc = crc32fast::Hasher::new();
            for (m, pi) in [(gate, &gi), (up, &ui), (down, &di)] {
                let s = &m.1[(e as u64 * pi.bytes) as usize..((e as u64 + 1) * pi.bytes) as usize];
                crc.update(s);
                w.write_all(s).map_err(io(&path))?;
            }
            w.write_all(&pad).map_err(io(&path))?;
            crcs.push(crc.finalize());
            done += rec;
            progress(done, total);
        }
        w.into_inner().map_err(|e| io(&path)(e.into_error()))?.sync_all().map_err(io(&path))?;
        layers_out.push(LayerExperts { layer, file: name, n_expert, record_bytes, gate: gi, up: ui, down: di, crc32: crcs });
    }

    // 3. source identity, read sequentially
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut files = Vec::new();
    for f in g.files() {
        files.push(f.path().file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()));
        let mut r = File::open(f.path()).map_err(io(f.path()))?;
        loop {
            let n = r.read(&mut buf).map_err(io(f.path()))?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            done += n as u64;
            progress(done.min(total), total);
        }
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        source: SourceInfo { files, bytes: g.file_bytes(), sha256: sha.finalize().iter().map(|b| format!("{b:02x}")).collect() },
        metadata: g.metadata().iter().filter(|(k, _)| !k.starts_with("split.")).map(|(k, v)| (k.to_string(), value_to_json(v))).collect(),
        layers: layers_out,
        base_crc32,
    };
    let mpath = tmp.join("manifest.json");
    std::fs::write(&mpath, serde_json::to_vec_pretty(&manifest).expect("manifest serializes")).map_err(io(&mpath))?;
    std::fs::rename(&tmp, out).map_err(io(out))?;
    progress(total, total);
    Ok(())
}

/// The CRC-32 of a file's bytes, read in order.
fn file_crc32(path: &Path) -> Result<u32> {
    let mut r = File::open(path).map_err(io(path))?;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = r.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            return Ok(crc.finalize());
        }
        crc.update(&buf[..n]);
    }
}

/// An opened store: the base tensors (memory-mapped) and the manifest.
pub struct Store {
    dir: PathBuf,
    manifest: Manifest,
    metadata: Metadata,
    map: Arc<GuardedMap>,
    base: HashMap<String, (TensorMeta, std::ops::Range<usize>)>,
}

impl Store {
    /// Whether `path` looks like a store (a directory with a manifest).
    pub fn is_store(path: &Path) -> bool {
        path.is_dir() && path.join("manifest.json").is_file()
    }

    /// Opens a store directory and checks its manifest and base file.
    pub fn open(dir: &Path) -> Result<Store> {
        let mpath = dir.join("manifest.json");
        let text = std::fs::read(&mpath).map_err(io(&mpath))?;
        let (manifest, metadata) = Manifest::parse(&text).map_err(|e| Error::model(format!("{}: {}", mpath.display(), e.to_string().trim_start_matches("model: "))))?;
        let bpath = dir.join("base.safetensors");
        let f = File::open(&bpath).map_err(io(&bpath))?;
        // SAFETY: read-only mapping of a file the store owns; it must not change while open.
        let map = unsafe { Mmap::map(&f) }.map_err(io(&bpath))?;
        if let Some(want) = manifest.base_crc32 {
            let got = crc32fast::hash(&map);
            if got != want {
                return Err(Error::model(format!("{}: checksum mismatch (CRC-32 {got:08x}, the manifest says {want:08x}): the file is damaged; convert the model again", bpath.display())));
            }
        }
        let (header_len, st) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| Error::model(format!("{}: {e}", bpath.display())))?;
        let data_start = 8 + header_len;
        let types = st.metadata().clone().unwrap_or_default();
        let mut base = HashMap::new();
        for (name, ti) in st.tensors() {
            let desc = types.get(&name).ok_or_else(|| Error::model(format!("{}: tensor {name} has no GGUF type", bpath.display())))?;
            let (ty, dims) = desc.split_once(':').ok_or_else(|| Error::model(format!("{}: bad type entry for {name}", bpath.display())))?;
            let ty = GgmlType::from_name(ty).ok_or_else(|| Error::model(format!("{name}: unknown type {ty}")))?;
            let dims: Vec<u64> = dims.split(',').map(|d| d.parse().map_err(|_| Error::model(format!("{name}: bad dims {dims}")))).collect::<Result<_>>()?;
            let (a, b) = ti.data_offsets;
            let range = data_start + a..data_start + b;
            if range.end > map.len() {
                return Err(Error::model(format!("{}: tensor {name} runs past the end of the file", bpath.display())));
            }
            base.insert(name.to_string(), (TensorMeta { ty, dims }, range));
        }
        Ok(Store { dir: dir.to_path_buf(), manifest, metadata, map: Arc::new(GuardedMap::new(map)), base })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl TensorSource for Store {
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    fn tensor_meta(&self, name: &str) -> Option<TensorMeta> {
        self.base.get(name).map(|(m, _)| m.clone())
    }

    fn tensor_bytes(&self, name: &str) -> Option<Bytes> {
        self.base.get(name).map(|(_, r)| Bytes::from_owner(MapRange { map: self.map.clone(), start: r.start, end: r.end }))
    }
}
