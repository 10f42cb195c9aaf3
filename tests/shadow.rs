//! The shadow predictor end to end on the demo model: traces recorded over held-out text,
//! a predictor trained on them that beats the three baselines on tokens it did not see,
//! and prefetching with it leaves the model's output unchanged.

use std::sync::Arc;

use odmoe::experts::PagerOptions;
use odmoe::model::{ExpertMode, Logits, Model, PackExperts, Prefetch};
use odmoe::shadow::{evaluate, trace, train, Shadow, TraceHeader, TraceWriter, Traces, TrainOptions};
use odmoe::tokenizer::Tokenizer;

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/odmoe-demo-shakespeare-Q8_0.gguf");
const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/corpus/twelfth-night.txt");

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("odmoe-shadow-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn trained_predictor_beats_the_baselines_and_prefetching_with_it_changes_nothing() {
    let m = Model::open(DEMO).unwrap();
    let tok = Tokenizer::from_gguf(m.metadata()).unwrap();
    let ids = tok.encode(&std::fs::read_to_string(CORPUS).unwrap(), false, false).unwrap();
    assert!(ids.len() > 8000, "{} tokens", ids.len());

    // record: windows of 256 tokens from an empty context
    let path = scratch("demo.trace");
    let mut w = TraceWriter::create(&path, TraceHeader::for_model(&m, DEMO).unwrap()).unwrap();
    for window in ids.chunks(256) {
        trace::record(&m, window, 128, &mut w).unwrap();
    }
    assert_eq!(w.finish().unwrap() as usize, ids.len());
    let t = Traces::open(&path).unwrap();
    assert_eq!((t.len(), t.header().layers.clone(), t.header().top_k), (ids.len(), vec![0, 1, 2, 3], 2));
    assert_eq!(t.token(300), ids[300]);
    // a recorded state routes, through its own layer's router, to the recorded experts
    // (the state is stored as f16, so allow a rare near-tie to flip)
    let mut agree = 0;
    let mut state = Vec::new();
    for tk in 0..200 {
        t.state(tk, 1, &mut state);
        let scores = m.router_scores(1, &state).unwrap();
        let mut best = odmoe::shadow::predictor::top(&scores, 2);
        let mut rec = t.experts(tk, 1).unwrap();
        best.sort();
        rec.sort();
        agree += (best == rec) as usize;
    }
    assert!(agree >= 195, "{agree}/200 recorded routes reproduced");

    // train on the first 85%, measure on the rest
    let opts = TrainOptions { lookahead: 2, rank: 64, epochs: 4, holdout: 0.15, ..Default::default() };
    let mut losses = Vec::new();
    let s = train(&t, &opts, &mut |_, l| losses.push(l)).unwrap();
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "training loss falls every epoch: {losses:?}");
    let gate = |layer: usize, x: &[f32]| m.router_scores(layer, x);
    let r = evaluate(&s, &t, opts.holdout, Some(&gate)).unwrap();
    eprintln!("{}", r.table());
    assert_eq!(r.distances.len(), 2);
    for d in &r.distances {
        let g = d.gate.as_ref().unwrap();
        for v in [d.shadow.at_k, d.shadow.at_2k, g.at_k, d.frequency.at_k, d.previous_token.at_2k] {
            assert!((0.0..=1.0).contains(&v));
        }
        assert!(d.shadow.at_2k >= d.shadow.at_k);
        assert!(d.shadow.at_k > g.at_k && d.shadow.at_k > d.frequency.at_k && d.shadow.at_k > d.previous_token.at_k, "distance {}: {d:?}", d.distance);
    }
    assert!(r.beats_baselines);

    // saved and loaded, it prefetches into a small cache without changing a logit
    let file = scratch("demo.shadow.safetensors");
    s.save(&file).unwrap();
    let loaded = Arc::new(Shadow::load(&file).unwrap());
    let opts = PagerOptions { budget: 4 << 20, read_threads: 4, prefetch_in_flight: 4, direct_io: false };
    let mut paged = Model::open_with(DEMO, &ExpertMode::Paged(opts)).unwrap();
    paged.set_shadow(loaded.clone()).unwrap();
    paged.set_prefetch(Prefetch::Shadow { depth: 2 });
    let prompt = &ids[..64];
    // the mapped model with its experts in the file's layout, as paged ones are
    let mapped = Model::open_with_packing(DEMO, &ExpertMode::Mapped, PackExperts::Never).unwrap();
    let want = mapped.forward(prompt, &mut mapped.new_cache(64), Logits::All).unwrap();
    let mut cache = paged.new_cache(64);
    let mut got = paged.forward(&prompt[..32], &mut cache, Logits::All).unwrap();
    for &token in &prompt[32..] {
        got.extend(paged.forward(&[token], &mut cache, Logits::All).unwrap());
    }
    assert_eq!(got, want);
    let stats = paged.pager().unwrap().stats();
    assert!(stats.prefetch_reads > 0 && stats.prefetch_hits > 0, "{stats:?}");

    // a predictor for another shape is refused
    let mut other = (*loaded).clone();
    other.layers = vec![0, 1, 2];
    assert!(paged.set_shadow(Arc::new(other)).unwrap_err().to_string().contains("another model"));
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
