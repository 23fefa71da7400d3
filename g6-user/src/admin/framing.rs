//! Admin line framing (SPEC.md §9.1).
//!
//! Lines end with `\n`; a `\r` right before the `\n` is dropped. Every complete line is yielded
//! in order whatever the segmentation of the byte stream. At end of input a final unterminated
//! line is yielded too (a trailing `\r` on it is dropped as well: end of input acts as `\n`).
//!
//! **Length limit.** A line may hold at most [`MAX_LINE`] = 4096 bytes, counted without the
//! `\n` and without the dropped `\r`; a line of exactly 4096 bytes is accepted ("over 4096"
//! closes the connection). The splitter never buffers more than `MAX_LINE + 1` bytes of a
//! partial line (the extra byte being a `\r` that may still be followed by `\n`).

use thiserror::Error;

/// Longest accepted line in bytes, without `\r\n` / `\n` (SPEC.md §9.1: "over 4096" closes).
pub const MAX_LINE: usize = 4096;

/// A line longer than [`MAX_LINE`] bytes was received: the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("admin command line longer than {MAX_LINE} bytes")]
pub struct LineTooLong;

/// Incremental line splitter for one admin connection.
///
/// Once [`push`](Self::push) has returned [`LineTooLong`], the splitter stays failed: every
/// later `push` returns the error again and [`finish`](Self::finish) yields nothing.
#[derive(Debug, Default)]
pub struct LineSplitter {
    /// Bytes of the current partial line (at most `MAX_LINE + 1`, the last then being `\r`).
    buf: Vec<u8>,
    failed: bool,
}

impl LineSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one received segment. Appends every line completed by it to `out`, in order,
    /// without its `\n` / `\r\n`.
    ///
    /// On [`LineTooLong`], `out` still holds the complete lines that preceded the offending
    /// one in the stream (they are to be executed, then the connection closed).
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), LineTooLong> {
        if self.failed {
            return Err(LineTooLong);
        }
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let seg = &data[..nl];
            let ends_cr = match seg.last() {
                Some(&b) => b == b'\r',
                None => self.buf.last() == Some(&b'\r'),
            };
            let content = self.buf.len() + seg.len() - usize::from(ends_cr);
            if content > MAX_LINE {
                return Err(self.fail());
            }
            let mut line = std::mem::take(&mut self.buf);
            line.extend_from_slice(seg);
            if ends_cr {
                line.pop();
            }
            out.push(line);
            data = &data[nl + 1..];
        }
        // `data` is now the start (or continuation) of a partial line.
        let total = self.buf.len() + data.len();
        if total > MAX_LINE {
            let last = data.last().or(self.buf.last());
            // 4096 bytes + `\r` may still become a valid line if `\n` follows.
            if !(total == MAX_LINE + 1 && last == Some(&b'\r')) {
                return Err(self.fail());
            }
        }
        self.buf.reserve_exact(data.len());
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// End of input: the final unterminated line, if any byte of it was received (a trailing
    /// `\r` is dropped). `None` after [`LineTooLong`].
    pub fn finish(mut self) -> Option<Vec<u8>> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        Some(self.buf)
    }

    /// Bytes of the pending partial line (never more than `MAX_LINE + 1`).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn fail(&mut self) -> LineTooLong {
        self.failed = true;
        self.buf = Vec::new();
        LineTooLong
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The final unterminated line, or the error that stopped splitting.
    type Fin = Result<Option<Vec<u8>>, LineTooLong>;

    fn split_with(segments: &[&[u8]]) -> (Vec<Vec<u8>>, Fin) {
        let mut s = LineSplitter::new();
        let mut out = Vec::new();
        for seg in segments {
            if let Err(e) = s.push(seg, &mut out) {
                return (out, Err(e));
            }
            assert!(s.pending() <= MAX_LINE + 1);
        }
        (out, Ok(s.finish()))
    }

    fn lines(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|l| l.as_bytes().to_vec()).collect()
    }

    #[test]
    fn basic_lf_and_crlf() {
        let (out, fin) = split_with(&[b"show rules\r\n?\nquit\r\n"]);
        assert_eq!(out, lines(&["show rules", "?", "quit"]));
        assert_eq!(fin, Ok(None));
    }

    #[test]
    fn only_the_cr_before_lf_is_dropped() {
        let (out, _) = split_with(&[b"a\r\rb\r\n\r\n\n\rx\n"]);
        assert_eq!(out, lines(&["a\r\rb", "", "", "\rx"]));
    }

    #[test]
    fn cr_and_lf_in_different_segments() {
        let (out, fin) = split_with(&[b"show", b" rules\r", b"\n", b"\r", b"\n"]);
        assert_eq!(out, lines(&["show rules", ""]));
        assert_eq!(fin, Ok(None));
    }

    #[test]
    fn final_unterminated_line() {
        let (out, fin) = split_with(&[b"?\nshow ", b"sessions"]);
        assert_eq!(out, lines(&["?"]));
        assert_eq!(fin, Ok(Some(b"show sessions".to_vec())));
        let (_, fin) = split_with(&[b"quit\r"]);
        assert_eq!(fin, Ok(Some(b"quit".to_vec())));
        let (out, fin) = split_with(&[]);
        assert!(out.is_empty());
        assert_eq!(fin, Ok(None));
    }

    #[test]
    fn exactly_4096_is_accepted() {
        let line = vec![b'x'; MAX_LINE];
        for term in [&b"\n"[..], b"\r\n"] {
            let mut input = line.clone();
            input.extend_from_slice(term);
            let (out, fin) = split_with(&[&input]);
            assert_eq!(out, vec![line.clone()]);
            assert_eq!(fin, Ok(None));
            // Byte by byte, too.
            let segs: Vec<&[u8]> = input.chunks(1).collect();
            let (out, _) = split_with(&segs);
            assert_eq!(out, vec![line.clone()]);
        }
        let (out, fin) = split_with(&[&line]);
        assert!(out.is_empty());
        assert_eq!(fin, Ok(Some(line.clone())));
        let mut with_cr = line.clone();
        with_cr.push(b'\r');
        let (_, fin) = split_with(&[&with_cr]);
        assert_eq!(fin, Ok(Some(line)));
    }

    #[test]
    fn over_4096_is_an_error() {
        let long = vec![b'x'; MAX_LINE + 1];
        for term in [&b""[..], b"\n", b"\r\n", b"\r", b"\ry"] {
            let mut input = b"?\n".to_vec();
            input.extend_from_slice(&long);
            input.extend_from_slice(term);
            let (out, fin) = split_with(&[&input]);
            assert_eq!(out, lines(&["?"]), "term {term:?}");
            assert_eq!(fin, Err(LineTooLong));
            let segs: Vec<&[u8]> = input.chunks(7).collect();
            let (out, fin) = split_with(&segs);
            assert_eq!(out, lines(&["?"]));
            assert_eq!(fin, Err(LineTooLong));
        }
        // 4096 bytes, then `\r` not followed by `\n`: the `\r` is content.
        let mut input = vec![b'x'; MAX_LINE];
        input.extend_from_slice(b"\r");
        let (_, fin) = split_with(&[&input, b"y"]);
        assert_eq!(fin, Err(LineTooLong));
        let (_, fin) = split_with(&[&input, b"\r\n"]);
        assert_eq!(fin, Err(LineTooLong));
    }

    #[test]
    fn failed_splitter_stays_failed() {
        let mut s = LineSplitter::new();
        let mut out = Vec::new();
        assert_eq!(
            s.push(&vec![b'a'; MAX_LINE + 2], &mut out),
            Err(LineTooLong)
        );
        assert_eq!(s.push(b"?\n", &mut out), Err(LineTooLong));
        assert!(out.is_empty());
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn long_stream_of_short_lines_is_fine() {
        let input = b"show rules\n".repeat(2000);
        let (out, fin) = split_with(&[&input]);
        assert_eq!(out.len(), 2000);
        assert_eq!(fin, Ok(None));
    }

    fn line_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                Just(b' '),
                Just(b'\t'),
                Just(b'\r'),
                Just(b'?'),
                b'a'..=b'z',
                any::<u8>().prop_filter("no LF", |b| *b != b'\n'),
            ],
            0..24,
        )
    }

    proptest! {
        #[test]
        fn every_segmentation_gives_the_same_lines(
            body in prop::collection::vec((line_strategy(), any::<bool>()), 0..12),
            tail in line_strategy(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut input = Vec::new();
            let mut expected = Vec::new();
            for (line, crlf) in &body {
                input.extend_from_slice(line);
                input.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
                let mut e = line.clone();
                if !*crlf && e.last() == Some(&b'\r') {
                    e.pop();
                }
                expected.push(e);
            }
            input.extend_from_slice(&tail);
            let mut expected_fin = tail.clone();
            if expected_fin.last() == Some(&b'\r') {
                expected_fin.pop();
            }
            let expected_fin = (!tail.is_empty()).then_some(expected_fin);

            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.sort_unstable();
            let mut segs: Vec<&[u8]> = Vec::new();
            let mut prev = 0;
            for p in points {
                segs.push(&input[prev..p]);
                prev = p;
            }
            segs.push(&input[prev..]);

            let (out, fin) = split_with(&segs);
            prop_assert_eq!(out, expected);
            prop_assert_eq!(fin, Ok(expected_fin));
        }

        #[test]
        fn matches_whole_input_model(
            runs in prop::collection::vec(
                (prop::sample::select(vec![b'\n', b'\r', b'x', b' ']), 0..2100usize), 0..10),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let input: Vec<u8> = runs.iter().flat_map(|&(b, n)| std::iter::repeat_n(b, n)).collect();
            // Model: split the whole input at once.
            let strip = |l: &[u8]| l.strip_suffix(b"\r").unwrap_or(l).to_vec();
            let mut parts: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
            let tail = parts.pop().unwrap();
            let mut expected = Vec::new();
            let mut expected_fin = Err(LineTooLong);
            'model: {
                for part in parts {
                    let l = strip(part);
                    if l.len() > MAX_LINE {
                        break 'model;
                    }
                    expected.push(l);
                }
                let t = strip(tail);
                if t.len() <= MAX_LINE {
                    expected_fin = Ok((!tail.is_empty()).then_some(t));
                }
            }

            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.sort_unstable();
            let mut segs: Vec<&[u8]> = Vec::new();
            let mut prev = 0;
            for p in points {
                segs.push(&input[prev..p]);
                prev = p;
            }
            segs.push(&input[prev..]);
            let (out, fin) = split_with(&segs);
            prop_assert_eq!(out, expected);
            prop_assert_eq!(fin, expected_fin);
        }

        #[test]
        fn memory_stays_bounded(segs in prop::collection::vec(
            prop::collection::vec((prop::sample::select(vec![b'\n', b'\r', b'x']), 0..1500usize), 0..6),
            0..8,
        )) {
            let mut s = LineSplitter::new();
            let mut out = Vec::new();
            for runs in &segs {
                let seg: Vec<u8> = runs.iter().flat_map(|&(b, n)| std::iter::repeat_n(b, n)).collect();
                if s.push(&seg, &mut out).is_err() {
                    break;
                }
                prop_assert!(s.pending() <= MAX_LINE + 1);
                prop_assert!(out.iter().all(|l| l.len() <= MAX_LINE));
            }
        }
    }
}
