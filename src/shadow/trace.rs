//! Routing traces: what the model's routers chose, token by token and layer by layer,
//! with the state each router saw. `odmoe collect` writes them; the shadow predictor is
//! trained and measured on them.
//!
//! # File format (little-endian)
//!
//! ```text
//! header
//!   magic        8 bytes   "ODMOETR1"
//!   n_embd       u32       width of the recorded states
//!   n_expert     u32       routed experts per layer
//!   top_k        u32       experts chosen per token
//!   n_layers     u32       MoE layers recorded
//!   layers       u32 × n_layers   their indices in the model, ascending
//!   source_len   u32       length of the next field
//!   source       bytes     UTF-8 path of the model the traces came from (may be empty)
//! records, one per token, back to back, each of `record_bytes()` bytes
//!   token        u32       token id
//!   for each recorded layer, in order:
//!     state      f16 × n_embd   the router's input (the FFN input after its norm)
//!     experts    u16 × top_k    chosen experts, best first
//!     weights    f32 × top_k    their mixing weights
//! ```
//!
//! Records have a fixed size, so a file is read through a memory mapping and a token's
//! record found by arithmetic; writing streams records out as they come, so memory stays
//! flat however long the corpus.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use half::f16;
use memmap2::Mmap;

use crate::model::router::Route;
use crate::model::{Logits, Model, Sequence};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"ODMOETR1";

/// The shape of a trace file: what every record holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceHeader {
    /// Width of the recorded states.
    pub n_embd: usize,
    /// Routed experts per layer.
    pub n_expert: usize,
    /// Experts chosen per token.
    pub top_k: usize,
    /// Model indices of the recorded (MoE) layers, ascending.
    pub layers: Vec<usize>,
    /// Path of the model the traces came from.
    pub source: String,
}

impl TraceHeader {
    /// The header for traces of `m` (its MoE layers), naming `source` as their origin.
    pub fn for_model(m: &Model, source: &str) -> Result<TraceHeader> {
        let moe = m.config().moe.as_ref().ok_or_else(|| Error::Invalid("the model has no routed experts: nothing to trace".into()))?;
        Ok(TraceHeader { n_embd: m.config().n_embd, n_expert: moe.n_expert, top_k: moe.n_expert_used, layers: m.moe_layers(), source: source.to_string() })
    }

    /// Bytes of one layer's part of a record.
    pub fn layer_bytes(&self) -> usize {
        2 * self.n_embd + 2 * self.top_k + 4 * self.top_k
    }

    /// Bytes of one token's record.
    pub fn record_bytes(&self) -> usize {
        4 + self.layers.len() * self.layer_bytes()
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        for v in [self.n_embd, self.n_expert, self.top_k, self.layers.len()] {
            b.extend((v as u32).to_le_bytes());
        }
        for &l in &self.layers {
            b.extend((l as u32).to_le_bytes());
        }
        b.extend((self.source.len() as u32).to_le_bytes());
        b.extend(self.source.as_bytes());
        b
    }

    /// Parses a header; returns it and its length in bytes.
    fn decode(b: &[u8]) -> Result<(TraceHeader, usize)> {
        let bad = |what: &str| Error::Invalid(format!("not a routing trace file: {what}"));
        if b.len() < 8 || &b[..8] != MAGIC {
            return Err(bad("wrong magic (expected ODMOETR1)"));
        }
        let mut at = 8;
        let mut u32_at = |b: &[u8]| -> Result<usize> {
            let v = b.get(at..at + 4).ok_or_else(|| bad("header cut short"))?;
            at += 4;
            Ok(u32::from_le_bytes(v.try_into().unwrap()) as usize)
        };
        let (n_embd, n_expert, top_k, n_layers) = (u32_at(b)?, u32_at(b)?, u32_at(b)?, u32_at(b)?);
        if n_embd == 0 || n_expert == 0 || top_k == 0 || top_k > n_expert || n_expert > u16::MAX as usize + 1 || n_layers == 0 || n_layers > 4096 {
            return Err(bad(&format!("implausible shape: n_embd {n_embd}, {n_expert} experts, top-{top_k}, {n_layers} layers")));
        }
        let layers = (0..n_layers).map(|_| u32_at(b)).collect::<Result<Vec<_>>>()?;
        if layers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad("layer indices are not ascending"));
        }
        let len = u32_at(b)?;
        let source = b.get(at..at + len).ok_or_else(|| bad("header cut short"))?;
        let source = String::from_utf8(source.to_vec()).map_err(|_| bad("source path is not UTF-8"))?;
        Ok((TraceHeader { n_embd, n_expert, top_k, layers, source }, at + len))
    }
}

/// Runs `ids` through `m` from an empty context, `chunk` tokens per forward pass, and
/// appends a record per token to `out` (whose header must be `m`'s).
pub fn record(m: &Model, ids: &[u32], chunk: usize, out: &mut TraceWriter) -> Result<()> {
    let layers = out.header.layers.clone();
    let d = out.header.n_embd;
    let mut cache = m.new_cache(ids.len());
    for chunk in ids.chunks(chunk.max(1)) {
        // per recorded layer: the chunk's router inputs and routes
        let mut seen: Vec<Option<(Vec<f32>, Vec<Route>)>> = vec![None; layers.len()];
        let mut trace = |layer: usize, rows: &[f32], routes: &[Route]| {
            if let Ok(i) = layers.binary_search(&layer) {
                seen[i] = Some((rows.to_vec(), routes.to_vec()));
            }
        };
        let mut seqs = [Sequence { tokens: chunk, cache: &mut cache, logits: Logits::None }];
        m.forward_batch_traced(&mut seqs, Some(&mut trace))?;
        let seen: Vec<(Vec<f32>, Vec<Route>)> = seen.into_iter().map(|s| s.ok_or_else(|| Error::Invalid("a recorded layer reported no routes: traces are for another model".into()))).collect::<Result<_>>()?;
        for (t, &token) in chunk.iter().enumerate() {
            let parts: Vec<(&[f32], &[usize], &[f32])> = seen.iter().map(|(rows, routes)| (&rows[t * d..(t + 1) * d], &routes[t].ids[..], &routes[t].weights[..])).collect();
            out.push(token, &parts)?;
        }
    }
    Ok(())
}

/// Streams records to a trace file.
pub struct TraceWriter {
    header: TraceHeader,
    out: BufWriter<File>,
    tokens: u64,
    record: Vec<u8>,
    path: std::path::PathBuf,
}

impl TraceWriter {
    /// Creates `path` (replacing it) and writes the header.
    pub fn create(path: &Path, header: TraceHeader) -> Result<TraceWriter> {
        let io = |e| Error::Io { path: path.to_path_buf(), source: e };
        let file = File::create(path).map_err(io)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header.encode()).map_err(io)?;
        Ok(TraceWriter { header, out, tokens: 0, record: Vec::new(), path: path.to_path_buf() })
    }

    /// The header being written.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// Appends one token's record: `layers[i]` holds the state, experts and weights of the
    /// i-th recorded layer.
    pub fn push(&mut self, token: u32, layers: &[(&[f32], &[usize], &[f32])]) -> Result<()> {
        let h = &self.header;
        assert_eq!(layers.len(), h.layers.len(), "one entry per recorded layer");
        self.record.clear();
        self.record.extend(token.to_le_bytes());
        for &(state, experts, weights) in layers {
            assert_eq!(state.len(), h.n_embd);
            assert!(experts.len() == h.top_k && weights.len() == h.top_k);
            self.record.extend(state.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()));
            self.record.extend(experts.iter().flat_map(|&e| (e as u16).to_le_bytes()));
            self.record.extend(weights.iter().flat_map(|&w| w.to_le_bytes()));
        }
        debug_assert_eq!(self.record.len(), h.record_bytes());
        self.out.write_all(&self.record).map_err(|e| Error::Io { path: self.path.clone(), source: e })?;
        self.tokens += 1;
        Ok(())
    }

    /// Records written so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Flushes everything to disk; returns the number of records.
    pub fn finish(mut self) -> Result<u64> {
        let io = |e| Error::Io { path: self.path.clone(), source: e };
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_all().map_err(io)?;
        Ok(self.tokens)
    }
}

/// A trace file opened for reading, records found by index through a memory mapping.
#[derive(Debug)]
pub struct Traces {
    header: TraceHeader,
    map: Mmap,
    start: usize,
    n_tokens: usize,
}

impl Traces {
    /// Opens and checks a trace file. A partly written last record (an interrupted
    /// collection) is ignored.
    pub fn open(path: &Path) -> Result<Traces> {
        let io = |e| Error::Io { path: path.to_path_buf(), source: e };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the file is only read; a concurrent truncation is outside our contract,
        // as for model files.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (header, start) = TraceHeader::decode(&map).map_err(|e| match e {
            Error::Invalid(m) => Error::Invalid(format!("{}: {m}", path.display())),
            e => e,
        })?;
        let n_tokens = (map.len() - start) / header.record_bytes();
        Ok(Traces { header, map, start, n_tokens })
    }

    /// The file's header.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// Records (tokens) in the file.
    pub fn len(&self) -> usize {
        self.n_tokens
    }

    /// Whether the file holds no record.
    pub fn is_empty(&self) -> bool {
        self.n_tokens == 0
    }

    fn record(&self, t: usize) -> &[u8] {
        let rb = self.header.record_bytes();
        &self.map[self.start + t * rb..self.start + (t + 1) * rb]
    }

    fn layer_part(&self, t: usize, i: usize) -> &[u8] {
        let lb = self.header.layer_bytes();
        &self.record(t)[4 + i * lb..4 + (i + 1) * lb]
    }

    /// Token id of record `t`.
    pub fn token(&self, t: usize) -> u32 {
        u32::from_le_bytes(self.record(t)[..4].try_into().unwrap())
    }

    /// The state recorded at the `i`-th recorded layer of token `t`, widened to f32.
    pub fn state(&self, t: usize, i: usize, out: &mut Vec<f32>) {
        let p = &self.layer_part(t, i)[..2 * self.header.n_embd];
        out.clear();
        out.extend(p.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()));
    }

    /// The experts chosen at the `i`-th recorded layer for token `t`, best first. Ids
    /// outside the expert count (a damaged file) are reported as errors.
    pub fn experts(&self, t: usize, i: usize) -> Result<Vec<usize>> {
        let (d, k) = (self.header.n_embd, self.header.top_k);
        let p = &self.layer_part(t, i)[2 * d..2 * d + 2 * k];
        let ids: Vec<usize> = p.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize).collect();
        match ids.iter().find(|&&e| e >= self.header.n_expert) {
            Some(e) => Err(Error::Invalid(format!("trace record {t}: expert {e} out of range ({} experts)", self.header.n_expert))),
            None => Ok(ids),
        }
    }

    /// The mixing weights of [`Traces::experts`].
    pub fn weights(&self, t: usize, i: usize) -> Vec<f32> {
        let (d, k) = (self.header.n_embd, self.header.top_k);
        let p = &self.layer_part(t, i)[2 * d + 2 * k..];
        p.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("odmoe-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.trace");
        let header = TraceHeader { n_embd: 4, n_expert: 8, top_k: 2, layers: vec![1, 3], source: "m.gguf".into() };
        let mut w = TraceWriter::create(&path, header.clone()).unwrap();
        w.push(7, &[(&[1.0, -2.0, 0.5, 0.0], &[3, 1], &[0.6, 0.4]), (&[0.25; 4], &[7, 0], &[0.9, 0.1])]).unwrap();
        w.push(9, &[(&[0.0; 4], &[2, 5], &[0.5, 0.5]), (&[1.0; 4], &[4, 6], &[0.7, 0.3])]).unwrap();
        assert_eq!(w.finish().unwrap(), 2);
        // an interrupted write leaves part of a record: ignored
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend([1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();
        let t = Traces::open(&path).unwrap();
        assert_eq!((t.header(), t.len()), (&header, 2));
        assert_eq!((t.token(0), t.token(1)), (7, 9));
        let mut s = Vec::new();
        t.state(0, 0, &mut s);
        assert_eq!(s, vec![1.0, -2.0, 0.5, 0.0]);
        assert_eq!(t.experts(0, 1).unwrap(), vec![7, 0]);
        assert_eq!(t.weights(1, 1), vec![0.7, 0.3]);
        // damaged files
        std::fs::write(&path, b"GGUF....").unwrap();
        assert!(Traces::open(&path).unwrap_err().to_string().contains("wrong magic"));
        let mut cut = header.encode();
        cut.truncate(20);
        std::fs::write(&path, &cut).unwrap();
        assert!(Traces::open(&path).unwrap_err().to_string().contains("cut short"));
        let mut bad = bytes.clone();
        let at = header.encode().len() + 4 + 2 * 4;
        bad[at..at + 2].copy_from_slice(&99u16.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        assert!(Traces::open(&path).unwrap().experts(0, 0).unwrap_err().to_string().contains("out of range"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
