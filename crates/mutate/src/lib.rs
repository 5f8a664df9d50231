//! Seeded mutations of a file, for the robustness tests of the workspace's parsers (feature
//! files, CSVs, TOML registries, `config.json`, images, MATLAB files): each test feeds thousands
//! of mutants of a valid file to a parser and asserts an error or a value, never a panic
//! ([`never_panics`]). Stable Rust, no fuzzing engine: the mutations are the ones that find the
//! bugs of hand-written parsers (truncation, bit flips, boundary integers in binary headers and
//! in text, duplicated and deleted spans), drawn from a seeded generator so a failure reproduces
//! from its seed.

#![warn(missing_docs)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Integers at the edges of what a size field holds.
const BOUNDARY_INTEGERS: [u64; 12] = [0, 1, 2, 7, 255, 256, 65_535, 65_536, 0x7FFF_FFFF, 0xFFFF_FFFF, 0x1_0000_0000, u64::MAX];

/// Text that numbers and strings of a configuration may be replaced by.
const BOUNDARY_TEXT: [&str; 16] = [
    "0",
    "-1",
    "1",
    "-0",
    "1e308",
    "-1e308",
    "NaN",
    "inf",
    "18446744073709551615",
    "18446744073709551616",
    "4294967296",
    "9999999999999999999999",
    "\"\"",
    "[]",
    "{}",
    "0.0000001",
];

/// A seeded source of mutants.
#[derive(Debug)]
pub struct Mutator {
    rng: ChaCha8Rng,
}

impl Mutator {
    /// The mutants of `seed`.
    pub fn new(seed: u64) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// `original` with one to four byte-level mutations: a bit flipped, a byte set to 0x00,
    /// 0xFF, 0x7F or 0x80, a little- or big-endian boundary integer written over 2, 4 or 8
    /// bytes, a span deleted, duplicated or filled with random bytes, random bytes inserted, or
    /// the file cut short.
    pub fn bytes(&mut self, original: &[u8]) -> Vec<u8> {
        let mut data = original.to_vec();
        for _ in 0..self.rng.random_range(1..=4) {
            if data.is_empty() {
                data.push(self.rng.random());
                continue;
            }
            let at = self.rng.random_range(0..data.len());
            match self.rng.random_range(0..8) {
                0 => data[at] ^= 1 << self.rng.random_range(0..8),
                1 => data[at] = [0x00, 0xFF, 0x7F, 0x80][self.rng.random_range(0..4)],
                2 => {
                    let value = BOUNDARY_INTEGERS[self.rng.random_range(0..BOUNDARY_INTEGERS.len())];
                    let width = [2, 4, 8][self.rng.random_range(0..3)];
                    let bytes = if self.rng.random_bool(0.5) { value.to_le_bytes() } else { value.to_be_bytes() };
                    let bytes = if bytes[0] == 0 && width < 8 { &bytes[8 - width..] } else { &bytes[..width] };
                    let end = (at + width).min(data.len());
                    data[at..end].copy_from_slice(&bytes[..end - at]);
                }
                3 => {
                    let end = (at + self.span()).min(data.len());
                    data.drain(at..end);
                }
                4 => {
                    let end = (at + self.span()).min(data.len());
                    let copy = data[at..end].to_vec();
                    data.splice(at..at, copy);
                }
                5 => {
                    let end = (at + self.span()).min(data.len());
                    self.rng.fill(&mut data[at..end]);
                }
                6 => {
                    let insert: Vec<u8> = (0..self.span()).map(|_| self.rng.random()).collect();
                    data.splice(at..at, insert);
                }
                _ => data.truncate(at),
            }
        }
        data
    }

    /// `original` with one to three text mutations: a number or a quoted string replaced by a
    /// boundary value (zero, negative, huge, NaN, an empty string or list), a line deleted or
    /// duplicated, a delimiter (`,` `=` `"` `[` `]` `{` `}` `:` newline) inserted or removed, or
    /// the text cut short.
    pub fn text(&mut self, original: &str) -> String {
        let mut text = original.to_string();
        for _ in 0..self.rng.random_range(1..=3) {
            let boundaries: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
            let at = boundaries[self.rng.random_range(0..boundaries.len())];
            match self.rng.random_range(0..6) {
                0 | 1 => {
                    // The token (a run of digits, letters, dots, signs) around `at`.
                    let is_token = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_');
                    let start = text[..at].rfind(|c: char| !is_token(c)).map_or(0, |i| i + 1);
                    let end = text[at..].find(|c: char| !is_token(c)).map_or(text.len(), |i| at + i);
                    let value = BOUNDARY_TEXT[self.rng.random_range(0..BOUNDARY_TEXT.len())];
                    text.replace_range(start..end, value);
                }
                2 => {
                    let mut lines: Vec<&str> = text.lines().collect();
                    if !lines.is_empty() {
                        let line = self.rng.random_range(0..lines.len());
                        if self.rng.random_bool(0.5) {
                            lines.remove(line);
                        } else {
                            lines.insert(line, lines[line]);
                        }
                    }
                    text = lines.join("\n");
                }
                3 => {
                    let delimiter = [",", "=", "\"", "[", "]", "{", "}", ":", "\n", ";"][self.rng.random_range(0..10)];
                    text.insert_str(at, delimiter);
                }
                4 => {
                    if let Some(c) = text[at..].chars().next() {
                        text.replace_range(at..at + c.len_utf8(), "");
                    }
                }
                _ => text.truncate(at),
            }
        }
        text
    }

    /// A span length: mostly short, sometimes long.
    fn span(&mut self) -> usize {
        if self.rng.random_bool(0.8) { self.rng.random_range(1..=8) } else { self.rng.random_range(9..=512) }
    }
}

/// Runs `parse` on `count` mutants of `original` (bytes or text, as `mutate` makes them) and
/// returns the ones that panicked, each with its seed and the panic's message; `parse` answers
/// with anything (an error or a value: both are fine). A test asserts the list is empty.
pub fn never_panics<T>(count: u64, seed: u64, mut mutate: impl FnMut(&mut Mutator) -> T, mut parse: impl FnMut(&T)) -> Vec<String> {
    let mut failures = Vec::new();
    for case in 0..count {
        let case_seed = seed.wrapping_mul(1_000_003).wrapping_add(case);
        let mut mutator = Mutator::new(case_seed);
        let mutant = mutate(&mut mutator);
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(&mutant))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            failures.push(format!("mutant seed {case_seed}: panicked: {message}"));
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_are_reproducible_differ_from_the_original_and_stay_text() {
        let original = "name = \"resnet18\"\nlayers = [2, 2, 2, 2]\nmean = [0.485, 0.456, 0.406]\n";
        let (mut a, mut b) = (Mutator::new(5), Mutator::new(5));
        let texts: Vec<String> = (0..200).map(|_| a.text(original)).collect();
        assert_eq!(texts, (0..200).map(|_| b.text(original)).collect::<Vec<_>>());
        assert!(texts.iter().filter(|t| t.as_str() != original).count() > 150);
        let bytes: Vec<Vec<u8>> = (0..200).map(|_| a.bytes(original.as_bytes())).collect();
        assert!(bytes.iter().filter(|b| b.as_slice() != original.as_bytes()).count() > 150);
        assert!(bytes.iter().any(|b| b.len() < original.len()) && bytes.iter().any(|b| b.len() > original.len()));
    }

    #[test]
    fn a_panicking_parser_is_reported_with_the_seed_that_reproduces_it() {
        let failures = never_panics(50, 1, |m| m.bytes(b"abcdefgh"), |data: &Vec<u8>| assert!(data.len() != 8, "eight bytes"));
        assert!(!failures.is_empty() && failures.iter().all(|f| f.contains("mutant seed") && f.contains("eight bytes")));
        let seed: u64 = failures[0].split_whitespace().nth(2).unwrap().trim_end_matches(':').parse().unwrap();
        assert_eq!(Mutator::new(seed).bytes(b"abcdefgh").len(), 8);
        assert!(never_panics(50, 1, |m| m.bytes(b"abcdefgh"), |_: &Vec<u8>| {}).is_empty());
    }
}
