//! Tokeniser of the configuration language (SPEC.md §4.1). Works on bytes and yields one token
//! at a time, so an error late in the file never hides an earlier one.

use super::error::{ErrorKind, MAX_TOKEN_LEN, show_token};
use super::model::Pos;

/// An error with the position it refers to; the parser adds the file label.
pub type Located = (Pos, ErrorKind);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokKind {
    /// Any run of other bytes, including the separators `-` and `>`.
    Word,
    LParen,
    RParen,
    Eq,
    Comma,
    Semi,
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub kind: TokKind,
    /// The token's bytes (empty for `Eof`).
    pub text: &'a [u8],
    pub pos: Pos,
}

impl Token<'_> {
    /// A word exactly equal to `w` (how `-` and `>` are recognised: only as whole tokens).
    pub fn is_word(&self, w: &[u8]) -> bool {
        self.kind == TokKind::Word && self.text == w
    }
}

/// Whitespace as C's `isspace` in the "C" locale, which the original used: includes `\v`.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

fn punct_kind(b: u8) -> Option<TokKind> {
    Some(match b {
        b'(' => TokKind::LParen,
        b')' => TokKind::RParen,
        b'=' => TokKind::Eq,
        b',' => TokKind::Comma,
        b';' => TokKind::Semi,
        _ => return None,
    })
}

pub struct Lexer<'a> {
    src: &'a [u8],
    i: usize,
    line: u32,
    line_start: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a [u8]) -> Self {
        Self {
            src,
            i: 0,
            line: 1,
            line_start: 0,
        }
    }

    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            col: u32::try_from(self.i - self.line_start + 1).unwrap_or(u32::MAX),
        }
    }

    /// Moves to `to`, keeping line accounting across any newlines skipped.
    fn advance_to(&mut self, to: usize) {
        for (k, &b) in self.src[self.i..to].iter().enumerate() {
            if b == b'\n' {
                self.line = self.line.saturating_add(1);
                self.line_start = self.i + k + 1;
            }
        }
        self.i = to;
    }

    /// `//` or `/*` at `at`: comments are recognised anywhere, also inside a would-be word.
    fn comment_at(&self, at: usize) -> Option<u8> {
        match self.src.get(at..at + 2) {
            Some([b'/', c @ (b'/' | b'*')]) => Some(*c),
            _ => None,
        }
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) -> Result<(), Located> {
        loop {
            let start = self.i;
            let rest = &self.src[start..];
            let to = match self.comment_at(start) {
                Some(b'/') => start + rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len()),
                Some(_) => {
                    // Search after the opening `/*`, so `/*/` does not close itself.
                    let close = rest[2..].windows(2).position(|w| w == b"*/");
                    match close {
                        Some(k) => start + 2 + k + 2,
                        None => return Err((self.pos(), ErrorKind::UnterminatedComment)),
                    }
                }
                None => {
                    start
                        + rest
                            .iter()
                            .position(|&b| !is_space(b))
                            .unwrap_or(rest.len())
                }
            };
            if to == start {
                return Ok(());
            }
            self.advance_to(to);
        }
    }

    pub fn next_token(&mut self) -> Result<Token<'a>, Located> {
        self.skip_trivia()?;
        let pos = self.pos();
        let start = self.i;
        let Some(&b) = self.src.get(start) else {
            return Ok(Token {
                kind: TokKind::Eof,
                text: &[],
                pos,
            });
        };
        if let Some(kind) = punct_kind(b) {
            self.i += 1;
            return Ok(Token {
                kind,
                text: &self.src[start..start + 1],
                pos,
            });
        }
        let mut end = start;
        while end < self.src.len()
            && !is_space(self.src[end])
            && punct_kind(self.src[end]).is_none()
            && self.comment_at(end).is_none()
        {
            end += 1;
        }
        let text = &self.src[start..end];
        if text.len() > MAX_TOKEN_LEN {
            return Err((
                pos,
                ErrorKind::TokenTooLong {
                    token: show_token(text),
                },
            ));
        }
        self.i = end;
        Ok(Token {
            kind: TokKind::Word,
            text,
            pos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (kind, text, line, col) of every token up to and including EOF.
    fn lex(src: &str) -> Result<Vec<(TokKind, String, u32, u32)>, Located> {
        let mut lx = Lexer::new(src.as_bytes());
        let mut out = Vec::new();
        loop {
            let t = lx.next_token()?;
            out.push((
                t.kind,
                String::from_utf8_lossy(t.text).into_owned(),
                t.pos.line,
                t.pos.col,
            ));
            if t.kind == TokKind::Eof {
                return Ok(out);
            }
        }
    }

    fn words(src: &str) -> Vec<String> {
        lex(src)
            .expect("lexes")
            .into_iter()
            .filter(|t| t.0 != TokKind::Eof)
            .map(|t| t.1)
            .collect()
    }

    #[test]
    fn punctuation_ends_words() {
        assert_eq!(words("(timeout=5)"), ["(", "timeout", "=", "5", ")"]);
        assert_eq!(words("80;"), ["80", ";"]);
        assert_eq!(words("a,b,"), ["a", ",", "b", ","]);
    }

    #[test]
    fn dash_and_gt_are_words() {
        assert_eq!(words("- > -5 a>b a-b"), ["-", ">", "-5", "a>b", "a-b"]);
        let toks = lex("->").unwrap();
        assert_eq!(toks[0].0, TokKind::Word);
        assert_eq!(toks[0].1, "->");
    }

    #[test]
    fn comments_anywhere() {
        assert_eq!(words("80;//x\n90"), ["80", ";", "90"]);
        assert_eq!(words("/*x*/a"), ["a"]);
        assert_eq!(words("a/*x*/b"), ["a", "b"]);
        assert_eq!(words("a//b\nc"), ["a", "c"]);
        assert_eq!(words("/* ; ( */ x /**/ y //"), ["x", "y"]);
        assert_eq!(words("/* \u{0} \u{ff} */z"), ["z"]);
        // `#` is an ordinary byte; a lone `/` too.
        assert_eq!(words("#x a/b"), ["#x", "a/b"]);
        // `*/` without an opening is ordinary text.
        assert_eq!(words("*/"), ["*/"]);
    }

    #[test]
    fn positions_are_one_based_byte_columns() {
        let t = lex("ab  c\n\t(x\n/* 1\n2 */ y").unwrap();
        let pos: Vec<_> = t.iter().map(|t| (t.1.as_str(), t.2, t.3)).collect();
        assert_eq!(
            pos,
            [
                ("ab", 1, 1),
                ("c", 1, 5),
                ("(", 2, 2),
                ("x", 2, 3),
                ("y", 4, 6),
                ("", 4, 7)
            ]
        );
        // Columns count bytes, not characters.
        assert_eq!(lex("é x").unwrap()[1].3, 4);
    }

    #[test]
    fn vertical_tab_and_form_feed_are_whitespace() {
        assert_eq!(words("a\x0bb\x0cc\r\nd"), ["a", "b", "c", "d"]);
    }

    #[test]
    fn eof_position() {
        assert_eq!(lex("").unwrap(), [(TokKind::Eof, String::new(), 1, 1)]);
        assert_eq!(lex("a\n").unwrap()[1], (TokKind::Eof, String::new(), 2, 1));
    }

    #[test]
    fn unterminated_comment_points_at_opening() {
        let (pos, kind) = lex("a\n  /* x */ /* y").unwrap_err();
        assert_eq!((pos.line, pos.col), (2, 11));
        assert_eq!(kind, ErrorKind::UnterminatedComment);
        // The `*` of `/*` does not also close it.
        assert!(lex("/*/").is_err());
        assert_eq!(words("/**/"), Vec::<String>::new());
    }

    #[test]
    fn token_length_limit() {
        let ok = "a".repeat(64);
        assert_eq!(words(&ok), [ok]);
        let (pos, kind) = lex(&format!("x {}", "b".repeat(65))).unwrap_err();
        assert_eq!((pos.line, pos.col), (1, 3));
        assert_eq!(
            kind,
            ErrorKind::TokenTooLong {
                token: "b".repeat(64)
            }
        );
    }
}
