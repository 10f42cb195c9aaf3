//! The GGUF reader on malformed and hostile input: every defect is an error that names
//! it, and no input panics or makes the reader allocate what the file claims.

mod common;

use odmoe::gguf::parse_header;

/// Writes GGUF bytes field by field.
#[derive(Default)]
struct Builder {
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

impl Builder {
    fn string(buf: &mut Vec<u8>, s: &str) {
        buf.extend((s.len() as u64).to_le_bytes());
        buf.extend(s.as_bytes());
    }
    fn kv_u32(&mut self, k: &str, v: u32) -> &mut Self {
        Self::string(&mut self.kv, k);
        self.kv.extend(4u32.to_le_bytes());
        self.kv.extend(v.to_le_bytes());
        self.n_kv += 1;
        self
    }
    fn kv_str(&mut self, k: &str, v: &str) -> &mut Self {
        Self::string(&mut self.kv, k);
        self.kv.extend(8u32.to_le_bytes());
        Self::string(&mut self.kv, v);
        self.n_kv += 1;
        self
    }
    fn kv_raw(&mut self, k: &str, ty: u32, raw: &[u8]) -> &mut Self {
        Self::string(&mut self.kv, k);
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(raw);
        self.n_kv += 1;
        self
    }
    /// An f32 tensor whose data is appended (aligned to 32).
    fn tensor_f32(&mut self, name: &str, dims: &[u64]) -> &mut Self {
        let n: u64 = dims.iter().product();
        let off = self.data.len() as u64;
        self.tensor_raw(name, dims, 0, off);
        for i in 0..n {
            self.data.extend((i as f32).to_le_bytes());
        }
        while !self.data.len().is_multiple_of(32) {
            self.data.push(0);
        }
        self
    }
    fn tensor_raw(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        Self::string(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }
    fn build(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend(self.n_tensors.to_le_bytes());
        b.extend(self.n_kv.to_le_bytes());
        b.extend(&self.kv);
        b.extend(&self.infos);
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend(&self.data);
        b
    }
}

fn valid() -> Vec<u8> {
    let mut b = Builder::default();
    b.kv_str("general.architecture", "llama").kv_u32("llama.block_count", 2);
    // an array of 3 u32
    let mut arr = 4u32.to_le_bytes().to_vec();
    arr.extend(3u64.to_le_bytes());
    for v in [7u32, 8, 9] {
        arr.extend(v.to_le_bytes());
    }
    b.kv_raw("test.array", 9, &arr);
    b.tensor_f32("a.weight", &[8, 2]).tensor_f32("b.weight", &[4]);
    b.build()
}

fn err_of(bytes: &[u8]) -> String {
    match parse_header(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn valid_file_parses_with_its_data() {
    let bytes = valid();
    let h = parse_header(&bytes).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.metadata.get_str("general.architecture"), Some("llama"));
    assert_eq!(h.metadata.get_u64("llama.block_count"), Some(2));
    assert_eq!(h.metadata.get("test.array").unwrap().as_array().unwrap().len(), 3);
    assert_eq!(h.tensors.len(), 2);
    let a = &h.tensors[0];
    assert_eq!(a.dims, vec![8, 2]);
    assert_eq!(a.size, 64);
    let data = &bytes[a.offset as usize..(a.offset + a.size) as usize];
    assert_eq!(f32::from_le_bytes(data[4..8].try_into().unwrap()), 1.0);
    assert_eq!(h.tensors[1].offset % 32, 0);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = valid();
    let h = parse_header(&bytes).unwrap();
    let end = h.tensors.iter().map(|t| t.offset + t.size).max().unwrap() as usize;
    // (bytes past the last tensor's data are only padding)
    for len in 0..end {
        let e = err_of(&bytes[..len]);
        assert!(
            e.contains("truncated") || e.contains("past the end") || e.contains("absurd") || e.contains("not a GGUF"),
            "length {len}: unexpected message {e:?}"
        );
    }
}

#[test]
fn version_2_parses_like_version_3() {
    let mut b = valid();
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    let h = parse_header(&b).unwrap();
    assert_eq!(h.version, 2);
    assert_eq!(h.tensors.len(), 2);
}

#[test]
fn bad_magic_and_versions() {
    let mut b = valid();
    b[0] = b'X';
    assert!(err_of(&b).contains("not a GGUF"));
    let mut b = valid();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(err_of(&b).contains("version 1"));
    let mut b = valid();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(err_of(&b).contains("big-endian"));
}

#[test]
fn absurd_lengths_do_not_allocate() {
    // string length
    let mut b = Builder::default();
    b.kv_raw("k", 8, &u64::MAX.to_le_bytes());
    assert!(err_of(&b.build()).contains("absurd"), "{}", err_of(&b.build()));
    // array length
    let mut raw = 4u32.to_le_bytes().to_vec();
    raw.extend((1u64 << 60).to_le_bytes());
    let mut b = Builder::default();
    b.kv_raw("arr", 9, &raw);
    assert!(err_of(&b.build()).contains("absurd"));
    // tensor and key counts
    let mut bytes = valid();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err_of(&bytes).contains("absurd tensor count"));
    let mut bytes = valid();
    bytes[16..24].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(err_of(&bytes).contains("absurd metadata count"));
}

#[test]
fn an_array_the_file_could_hold_is_still_bounded() {
    // 300 million one-byte values: the file's bytes allow it, but held as metadata values
    // they would take ~10 GB; refused by count (the file is mostly zeros, as a sparse
    // file of that size is)
    let n = 300_000_000u64;
    let mut raw = 0u32.to_le_bytes().to_vec();
    raw.extend(n.to_le_bytes());
    let mut b = Builder::default();
    b.kv_raw("huge", 9, &raw);
    let mut bytes = b.build();
    bytes.resize(bytes.len() + n as usize, 0);
    let e = err_of(&bytes);
    assert!(e.contains("\"huge\"") && e.contains("300000000 values"), "{e}");
    // many arrays just under the limit each: bounded in total
    let mut b = Builder::default();
    let per = 1u64 << 22;
    for i in 0..5 {
        let mut raw = 0u32.to_le_bytes().to_vec();
        raw.extend(per.to_le_bytes());
        raw.extend(vec![0u8; per as usize]);
        b.kv_raw(&format!("a{i}"), 9, &raw);
    }
    let e = err_of(&b.build());
    assert!(e.contains("more than") && e.contains("values"), "{e}");
}

#[test]
fn overlapping_tensors_are_refused() {
    let mut b = Builder::default();
    b.tensor_f32("a", &[16]).tensor_raw("b", &[8], 0, 32);
    let e = err_of(&b.build());
    assert!(e.contains("overlap") && e.contains("\"a\"") && e.contains("\"b\""), "{e}");
}

#[test]
fn unknown_types_are_named() {
    let mut b = Builder::default();
    b.tensor_raw("w", &[32], 1000, 0);
    let e = err_of(&b.build());
    assert!(e.contains("\"w\"") && e.contains("unknown type id 1000"), "{e}");
    let mut b = Builder::default();
    b.kv_raw("k", 77, &[0; 8]);
    assert!(err_of(&b.build()).contains("unknown value type 77"));
    let mut raw = 99u32.to_le_bytes().to_vec();
    raw.extend(1u64.to_le_bytes());
    let mut b = Builder::default();
    b.kv_raw("arr", 9, &raw);
    assert!(err_of(&b.build()).contains("unknown array element type 99"));
}

#[test]
fn too_many_dims() {
    let mut b = Builder::default();
    b.tensor_raw("w", &[1, 1, 1, 1, 1], 0, 0);
    assert!(err_of(&b.build()).contains("5 dimensions"));
}

#[test]
fn data_past_the_end_or_misaligned() {
    let mut b = Builder::default();
    b.tensor_raw("w", &[1024], 0, 0);
    let e = err_of(&b.build());
    assert!(e.contains("past the end"), "{e}");
    let mut b = Builder::default();
    b.tensor_f32("a", &[8]).tensor_raw("w", &[8], 0, 4);
    assert!(err_of(&b.build()).contains("not aligned"));
    let mut b = Builder::default();
    b.tensor_raw("w", &[8], 0, u64::MAX - 7);
    assert!(!err_of(&b.build()).is_empty());
}

#[test]
fn partial_blocks_and_overflowing_shapes() {
    let mut b = Builder::default();
    b.tensor_raw("q", &[33], 8, 0); // Q8_0 needs whole blocks of 32
    assert!(err_of(&b.build()).contains("not a multiple"));
    let mut b = Builder::default();
    b.tensor_raw("big", &[u64::MAX / 2, 4], 0, 0);
    assert!(err_of(&b.build()).contains("overflows"));
}

#[test]
fn bad_alignment_and_duplicates() {
    let mut b = Builder::default();
    b.kv_u32("general.alignment", 48);
    assert!(err_of(&b.build()).contains("power of two"));
    let mut b = Builder::default();
    b.tensor_f32("a", &[8]).tensor_f32("a", &[8]);
    assert!(err_of(&b.build()).contains("twice"));
}

#[test]
fn random_corruption_never_panics() {
    let base = valid();
    let mut s: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for _ in 0..20_000 {
        let mut b = base.clone();
        for _ in 0..(1 + next() % 4) {
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
        }
        let _ = parse_header(&b);
    }
}

#[test]
fn model_load_names_unsupported_tensor_types() {
    // Patch the type of one tensor of a real fixture to IQ4_NL (valid GGUF, not computable).
    let path = common::fixture("models/mixtral.f32.gguf");
    let mut bytes = std::fs::read(&path).unwrap();
    let name = b"blk.0.attn_q.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty_at = at + 4 + 8 * n_dims;
    bytes[ty_at..ty_at + 4].copy_from_slice(&20u32.to_le_bytes());
    let dir = std::env::temp_dir().join(format!("odmoe-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("patched.gguf");
    std::fs::write(&p, &bytes).unwrap();
    let e = odmoe::model::Model::open(&p).err().expect("load must fail").to_string();
    assert!(e.contains("blk.0.attn_q.weight") && e.contains("IQ4_NL"), "{e}");

    // An architecture the engine does not run is named too.
    let arch = b"llama";
    let at = bytes.windows(arch.len()).position(|w| w == arch).unwrap();
    bytes[at..at + 5].copy_from_slice(b"gpt-x");
    std::fs::write(&p, &bytes).unwrap();
    let e = odmoe::model::Model::open(&p).err().expect("load must fail").to_string();
    assert!(e.contains("\"gpt-x\"") && e.contains("not supported"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The fixture `models/mixtral.f32.gguf` with `edit` applied to its bytes, written to a
/// scratch file; the error opening and running it (`None` if it loads and runs cleanly).
fn run_edited(tag: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Option<String> {
    let mut bytes = std::fs::read(common::fixture("models/mixtral.f32.gguf")).unwrap();
    edit(&mut bytes);
    let dir = std::env::temp_dir().join(format!("odmoe-hostile-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("edited.gguf");
    std::fs::write(&p, &bytes).unwrap();
    let out = (|| {
        let m = odmoe::model::Model::open(&p)?;
        let mut c = m.new_cache(4);
        m.forward(&[1, 2, 3], &mut c, odmoe::model::Logits::All).map(|_| ())
    })();
    std::fs::remove_dir_all(&dir).ok();
    out.err().map(|e| e.to_string())
}

/// Where tensor `name`'s type id lies in the header of `bytes`.
fn type_at(bytes: &[u8], name: &[u8]) -> usize {
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    at + 4 + 8 * n_dims
}

/// Where metadata key `key`'s value (after its type) lies.
fn value_at(bytes: &[u8], key: &[u8]) -> usize {
    bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4
}

#[test]
fn settings_and_tensors_that_would_give_nan_logits_are_refused() {
    // an F32 tensor marked F16, BF16 or Q4_1 (its extent shrinks, so the header still
    // checks out): its values are nonsense, with NaNs and infinities among them
    for (ty, id) in [("F16", 1u32), ("BF16", 30), ("Q4_1", 3)] {
        let e = run_edited(ty, |b| {
            let at = type_at(b, b"blk.0.attn_q.weight");
            b[at..at + 4].copy_from_slice(&id.to_le_bytes());
        })
        .unwrap_or_else(|| panic!("an F32 tensor marked {ty} was accepted"));
        assert!(e.contains("blk.0.attn_q.weight") && e.contains("type in the header"), "{ty}: {e}");
    }
    // a rope base that is NaN or negative
    for (what, v) in [("NaN", f32::NAN), ("-1", -1.0), ("infinite", f32::INFINITY)] {
        let e = run_edited(what, |b| {
            let at = value_at(b, b"llama.rope.freq_base");
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        })
        .unwrap_or_else(|| panic!("a rope base of {what} was accepted"));
        assert!(e.contains("rope.freq_base"), "{what}: {e}");
    }
    // finite weights whose products overflow: the pass says so instead of returning
    // infinite logits
    let e = run_edited("overflow", |b| {
        let g = odmoe::gguf::parse_header(b).unwrap();
        let t = g.tensors.iter().find(|t| t.name == "output_norm.weight").unwrap();
        for v in b[t.offset as usize..(t.offset + t.size) as usize].chunks_exact_mut(4) {
            v.copy_from_slice(&3e38f32.to_le_bytes());
        }
    })
    .expect("infinite logits were returned");
    assert!(e.contains("not finite"), "{e}");
}

#[test]
fn what_is_not_a_model_file_is_named() {
    let dir = std::env::temp_dir().join(format!("odmoe-notfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // a directory without a manifest
    let e = odmoe::model::Model::open(&dir).err().unwrap().to_string();
    assert!(e.contains("is a directory") && e.contains("manifest.json"), "{e}");
    // a FIFO: refused at once (opening it would wait for a writer)
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path in a scratch directory
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = odmoe::model::Model::open(&fifo).err().unwrap().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
