//! Parsing of a GGUF header (metadata and tensor infos) from bytes.
//!
//! Every length read from the file is checked against the bytes that remain before
//! anything is allocated, so a hostile file gets an error, never a panic or a huge
//! allocation.

use super::value::{Metadata, Value};
use crate::quant::GgmlType;

/// GGUF magic, "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Default `general.alignment` when the key is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a tensor may have.
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays accepted in metadata.
const MAX_ARRAY_DEPTH: usize = 3;
/// Most metadata values (array elements included) a file may hold. Each takes tens of
/// bytes in memory against one in the file, so a file's size alone does not bound them;
/// the largest real metadata, a 262,144-token vocabulary with its scores, types and
/// merges, holds about a million.
pub const MAX_METADATA_VALUES: usize = 1 << 24;

/// Where one tensor's data lies and how it is shaped.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.ffn_gate_exps.weight`.
    pub name: String,
    /// Dimensions as GGUF stores them: `dims[0]` is the innermost (contiguous) one.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in its file.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Total number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Length of one row (the innermost dimension).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of all dimensions but the first).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// The parsed header of one GGUF file.
#[derive(Clone, Debug)]
pub struct Header {
    /// Format version (2 or 3).
    pub version: u32,
    /// Key/value metadata.
    pub metadata: Metadata,
    /// Tensor descriptions, in file order, with absolute offsets.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment in bytes.
    pub alignment: u64,
    /// Absolute offset where tensor data starts.
    pub data_offset: u64,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Metadata values read so far (bounded by [`MAX_METADATA_VALUES`]).
    values: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "truncated file: {what} needs {n} bytes at offset {} but only {} remain",
                self.pos,
                self.remaining()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length that must fit in what remains, given each item takes at least `min_item` bytes.
    fn len(&mut self, what: &str, min_item: usize) -> Result<usize, String> {
        let at = self.pos;
        let n = self.u64(what)?;
        let max = (self.remaining() / min_item.max(1)) as u64;
        if n > max {
            return Err(format!(
                "absurd {what} {n} at offset {at}: only {} bytes remain in the file",
                self.remaining()
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.len(&format!("{what} length"), 1)?;
        let at = self.pos;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} at offset {at} is not valid UTF-8"))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value, String> {
        self.values += 1;
        if self.values > MAX_METADATA_VALUES {
            return Err(format!("metadata key {key:?}: the metadata holds more than {MAX_METADATA_VALUES} values, far more than any model's; the file is damaged"));
        }
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(key)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("metadata key {key:?}: invalid bool byte {b}")),
            },
            8 => Value::String(self.string(&format!("value of {key:?}"))?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("metadata key {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH}"));
                }
                let elem_ty = self.u32(key)?;
                let min = min_value_size(elem_ty)
                    .ok_or_else(|| format!("metadata key {key:?}: unknown array element type {elem_ty}"))?;
                let n = self.len(&format!("array length of {key:?}"), min)?;
                if n > MAX_METADATA_VALUES {
                    return Err(format!("metadata key {key:?}: an array of {n} values, far more than any model's (at most {MAX_METADATA_VALUES}); the file is damaged"));
                }
                // grown as values are read, not reserved up front: the length is the file's word
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => return Err(format!("metadata key {key:?}: unknown value type {other}")),
        })
    }
}

/// Smallest encoding of a value of type `ty`, used to bound array lengths.
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

/// Parses the header of a GGUF file held in `buf` and validates every tensor's extent
/// against `buf.len()`.
pub fn parse_header(buf: &[u8]) -> Result<Header, String> {
    let mut c = Cursor { buf, pos: 0, values: 0 };
    let magic = c.u32("magic")?;
    if magic != GGUF_MAGIC {
        return Err(format!("not a GGUF file (magic {:02x?})", magic.to_le_bytes()));
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => return Err("GGUF version 1 is not supported; re-convert the model with a current converter".into()),
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err("big-endian GGUF files are not supported".into())
        }
        v => return Err(format!("unsupported GGUF version {v}")),
    }
    // smallest tensor info: name len (8) + n_dims (4) + type (4) + offset (8)
    let n_tensors = c.len("tensor count", 24)?;
    // smallest key/value: key len (8) + type (4) + one byte
    let n_kv = c.len("metadata count", 13)?;

    let mut metadata = Metadata::default();
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        let ty = c.u32(&key)?;
        let v = c.value(ty, &key, 0)?;
        metadata.push(key, v);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 30 => a,
            _ => return Err(format!("general.alignment {v} is not a power of two")),
        },
    };

    let mut infos = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&format!("name of tensor #{i}"))?;
        let n_dims = c.u32(&name)? as usize;
        if n_dims > MAX_DIMS {
            return Err(format!("tensor {name:?} has {n_dims} dimensions (at most {MAX_DIMS} are allowed)"));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(c.u64(&name)?);
        }
        let type_id = c.u32(&name)?;
        let ggml_type = GgmlType::from_id(type_id)
            .ok_or_else(|| format!("tensor {name:?} has unknown type id {type_id}"))?;
        let rel = c.u64(&name)?;
        infos.push((name, dims, ggml_type, rel));
    }

    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    let mut tensors = Vec::with_capacity(infos.len());
    let mut seen = std::collections::HashSet::with_capacity(infos.len());
    for (name, dims, ggml_type, rel) in infos {
        if !seen.insert(name.clone()) {
            return Err(format!("tensor {name:?} appears twice"));
        }
        let mut n: u64 = 1;
        for &d in &dims {
            n = n
                .checked_mul(d)
                .filter(|&n| n < 1 << 60)
                .ok_or_else(|| format!("tensor {name:?}: element count overflows (dims {dims:?})"))?;
        }
        let row = dims.first().copied().unwrap_or(1);
        let size = ggml_type
            .row_bytes(row)
            .and_then(|rb| rb.checked_mul(n / row.max(1)))
            .ok_or_else(|| {
                format!(
                    "tensor {name:?}: row length {row} is not a multiple of the {} block size {}",
                    ggml_type,
                    ggml_type.block_size()
                )
            })?;
        if rel % alignment != 0 {
            return Err(format!("tensor {name:?}: data offset {rel} is not aligned to {alignment}"));
        }
        let offset = data_offset
            .checked_add(rel)
            .ok_or_else(|| format!("tensor {name:?}: data offset {rel} overflows"))?;
        let end = offset.checked_add(size).filter(|&e| e <= file_len).ok_or_else(|| {
            format!(
                "tensor {name:?}: data [{offset}, {offset}+{size}) runs past the end of the file ({file_len} bytes); the file may be truncated"
            )
        })?;
        let _ = end;
        tensors.push(TensorInfo { name, dims, ggml_type, offset, size });
    }
    // no two tensors share bytes (a retagged or hand-edited header can make them)
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.size > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for w in by_offset.windows(2) {
        if w[0].offset + w[0].size > w[1].offset {
            return Err(format!(
                "tensors {:?} (bytes {}..{}) and {:?} (from byte {}) overlap; the header is damaged",
                w[0].name,
                w[0].offset,
                w[0].offset + w[0].size,
                w[1].name,
                w[1].offset
            ));
        }
    }

    Ok(Header { version, metadata, tensors, alignment, data_offset })
}
