//! Streaming detokenization: text is released as soon as it is valid UTF-8, so a
//! multi-byte character split across tokens is never cut.

/// Accumulates token bytes and hands out complete UTF-8 text.
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token's bytes; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) => match e.error_len() {
                // an incomplete character at the end: keep it for the next token
                None => e.valid_up_to(),
                // invalid bytes in the middle can never become valid: replace them
                Some(_) => {
                    let s = String::from_utf8_lossy(&self.pending).into_owned();
                    let keep = incomplete_tail(&self.pending);
                    let out = String::from_utf8_lossy(&self.pending[..self.pending.len() - keep]).into_owned();
                    let _ = s;
                    self.pending.drain(..self.pending.len() - keep);
                    return out;
                }
            },
        };
        let out = String::from_utf8(self.pending[..valid].to_vec()).expect("validated");
        self.pending.drain(..valid);
        out
    }

    /// Whatever is left at the end of the stream (incomplete bytes become U+FFFD).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// Length of a trailing incomplete (but so far valid) UTF-8 sequence.
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let c = b[b.len() - back];
        if c & 0xC0 != 0x80 {
            let need = if c >= 0xF0 { 4 } else if c >= 0xE0 { 3 } else if c >= 0xC0 { 2 } else { 1 };
            return if need > back { back } else { 0 };
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_characters_are_never_split() {
        let text = "añ🦙日";
        let bytes = text.as_bytes();
        let mut d = StreamDecoder::new();
        let mut out = String::new();
        for b in bytes {
            let piece = d.push(&[*b]);
            assert!(text.starts_with(&(out.clone() + &piece)));
            out += &piece;
        }
        out += &d.finish();
        assert_eq!(out, text);
    }

    #[test]
    fn invalid_bytes_are_replaced_not_held() {
        let mut d = StreamDecoder::new();
        assert_eq!(d.push(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
        assert_eq!(d.push(&[0xE6, 0x97]), "");
        assert_eq!(d.push(&[0xA5]), "日");
        assert_eq!(d.push(&[0xE6]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }
}
