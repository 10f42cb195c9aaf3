//! The prefix cache: the keys and values of finished sessions, kept within a byte budget,
//! so that a request that begins as an earlier one did — a conversation's next turn, the
//! same system prompt, the same request again — starts after the longest cached
//! beginning instead of processing it again.
//!
//! Each entry is one finished session's cache with the tokens it holds. A lookup finds
//! the entry sharing the longest beginning with a prompt and copies those positions into
//! the new session's cache ([`odmoe::model::Model::cache_prefix`]); the reply is exactly
//! the one a fresh prefill gives, as every pass computes each position alone. An entry
//! whose tokens another entry extends is dropped for it (a conversation keeps its latest
//! turn); beyond the budget, the least recently used entries go.

use odmoe::model::{KvCache, Model};

/// One finished session's keys and values.
struct Entry {
    /// The tokens whose keys and values `cache` holds, in order.
    tokens: Vec<u32>,
    cache: KvCache,
    /// When last looked up or stored (a counter).
    used: u64,
}

/// Finished sessions' caches within a byte budget.
pub struct PrefixCache {
    entries: Vec<Entry>,
    bytes: u64,
    budget: u64,
    clock: u64,
}

impl PrefixCache {
    /// An empty cache holding at most `budget` bytes of keys and values (0: nothing is
    /// kept).
    pub fn new(budget: u64) -> PrefixCache {
        PrefixCache { entries: Vec::new(), bytes: 0, budget, clock: 0 }
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The cache for a new session of `prompt` (at most `max_len` positions): a copy of
    /// the longest cached beginning of it, and that beginning's length (at most all but
    /// the prompt's last token, which must be run for its logits); `None` when no entry
    /// shares a token with it.
    pub fn lookup(&mut self, model: &Model, prompt: &[u32], max_len: usize) -> Option<(KvCache, usize)> {
        let most = prompt.len().saturating_sub(1).min(max_len);
        let (i, len) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, e.tokens.iter().zip(prompt).take(most).take_while(|(a, b)| a == b).count()))
            .max_by_key(|&(i, len)| (len, self.entries[i].used))?;
        if len == 0 {
            return None;
        }
        self.clock += 1;
        let e = &mut self.entries[i];
        e.used = self.clock;
        Some((model.cache_prefix(&e.cache, len, max_len), len))
    }

    /// Keeps `cache`, which holds the keys and values of `tokens`: entries it extends
    /// are dropped for it, it is dropped if an entry already extends it, and the least
    /// recently used entries go while the total passes the budget.
    pub fn insert(&mut self, tokens: Vec<u32>, cache: KvCache) {
        let bytes = cache.bytes();
        if tokens.is_empty() || bytes > self.budget || cache.len() != tokens.len() {
            return;
        }
        self.clock += 1;
        if let Some(e) = self.entries.iter_mut().find(|e| e.tokens.starts_with(&tokens)) {
            e.used = self.clock;
            return;
        }
        self.entries.retain(|e| !tokens.starts_with(&e.tokens));
        self.entries.push(Entry { tokens, cache, used: self.clock });
        self.bytes = self.entries.iter().map(|e| e.cache.bytes()).sum();
        while self.bytes > self.budget {
            let lru = self.entries.iter().enumerate().min_by_key(|(_, e)| e.used).map(|(i, _)| i).expect("over budget means an entry");
            self.bytes -= self.entries.swap_remove(lru).cache.bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use odmoe::model::Logits;

    const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/odmoe-demo-shakespeare-Q8_0.gguf");

    /// A finished session's cache: `tokens` run through the model.
    fn cache_of(m: &Model, tokens: &[u32]) -> KvCache {
        let mut c = m.new_cache(64);
        m.forward(tokens, &mut c, Logits::None).unwrap();
        c
    }

    #[test]
    fn the_longest_beginning_is_found_and_gives_a_fresh_prefills_logits() {
        let m = Model::open(DEMO).unwrap();
        let mut p = PrefixCache::new(u64::MAX);
        p.insert(vec![1, 2, 3, 4], cache_of(&m, &[1, 2, 3, 4]));
        p.insert(vec![1, 2, 9], cache_of(&m, &[1, 2, 9]));
        let prompt = [1, 2, 3, 7, 8];
        let (mut c, len) = p.lookup(&m, &prompt, 64).unwrap();
        assert_eq!((len, c.len()), (3, 3));
        let reused = m.forward(&prompt[3..], &mut c, Logits::All).unwrap();
        let fresh = m.forward(&prompt, &mut m.new_cache(64), Logits::All).unwrap();
        assert_eq!(reused, fresh[3 * m.config().n_vocab..], "logits after a reused beginning differ from a fresh prefill's");
        // the prompt's last token is always run; nothing shared, nothing found
        assert_eq!(p.lookup(&m, &[1, 2, 3, 4], 64).unwrap().1, 3);
        assert!(p.lookup(&m, &[5, 6], 64).is_none());
    }

    #[test]
    fn extended_entries_replace_theirs_and_the_budget_holds() {
        let m = Model::open(DEMO).unwrap();
        let one = cache_of(&m, &[1, 2]).bytes();
        let mut p = PrefixCache::new(3 * one);
        // a conversation's turns: each extends the last, which is dropped for it
        p.insert(vec![1, 2], cache_of(&m, &[1, 2]));
        p.insert(vec![1, 2, 3, 4], cache_of(&m, &[1, 2, 3, 4]));
        assert_eq!((p.entries.len(), p.bytes()), (1, 2 * one));
        // what an entry already extends is not kept twice
        p.insert(vec![1, 2, 3], cache_of(&m, &[1, 2, 3]));
        assert_eq!(p.entries.len(), 1);
        // over the budget the least recently used goes
        p.insert(vec![7, 8], cache_of(&m, &[7, 8]));
        assert!(p.lookup(&m, &[1, 2, 3, 4, 5], 64).is_some()); // used: now the newest
        p.insert(vec![9, 9], cache_of(&m, &[9, 9]));
        assert!(p.bytes() <= 3 * one);
        assert!(p.lookup(&m, &[7, 8, 1], 64).is_none(), "the least recently used entry was kept");
        assert!(p.lookup(&m, &[1, 2, 3, 4, 5], 64).is_some());
        // a zero budget keeps nothing
        let mut none = PrefixCache::new(0);
        none.insert(vec![1, 2], cache_of(&m, &[1, 2]));
        assert!(none.lookup(&m, &[1, 2, 3], 64).is_none());
    }
}
