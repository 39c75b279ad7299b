//! Byte-level mutations of a known-good input. Positions are proptest `Index`es (scaled to the
//! input's length when applied, so they shrink towards the start), landing in a focus region
//! (a file's header, where its structure is) or anywhere. The structure-aware mutation writes
//! an interesting integer into one of the format's integer fields (counts, lengths, dimensions,
//! types, offsets), as the caller lists them.

use std::ops::Range;

use proptest::prelude::*;
use proptest::sample::Index;

/// Where a mutation lands: in the focus region or anywhere in the input.
#[derive(Debug, Clone)]
pub struct Pos {
    /// In the focus region (when the caller gives one) rather than anywhere.
    pub focus: bool,
    /// The position, scaled to the region's length.
    pub at: Index,
}

impl Pos {
    fn resolve(&self, len: usize, focus: &Range<usize>) -> usize {
        let region = if self.focus && focus.start < focus.end.min(len) {
            focus.start..focus.end.min(len)
        } else {
            0..len
        };
        if region.is_empty() {
            return 0;
        }
        region.start + self.at.index(region.len())
    }
}

/// A little-endian integer field of a binary format: a count, length, dimension, type tag or
/// offset, `width` bytes at `offset` in the known-good input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Byte offset in the known-good input.
    pub offset: usize,
    /// Width in bytes (1, 2, 4 or 8).
    pub width: usize,
}

/// One byte-level mutation.
#[derive(Debug, Clone)]
pub enum ByteMutation {
    /// Flips one bit.
    Flip(Pos, u8),
    /// Overwrites one byte.
    Set(Pos, u8),
    /// Writes a little-endian integer of 1, 2, 4 or 8 bytes.
    Int(Pos, u8, u64),
    /// Inserts bytes.
    Insert(Pos, Vec<u8>),
    /// Deletes up to this many bytes.
    Delete(Pos, usize),
    /// Copies up to `len` bytes from one place over another.
    Copy(Pos, Pos, usize),
    /// Cuts the input here.
    Truncate(Pos),
    /// Writes an integer into one of the format's fields (structure-aware).
    Field(Index, u64),
}

/// Integers that break size arithmetic: zero, one, powers of two and their neighbours around
/// the 8/16/32/63/64-bit boundaries, 10^12, and any value.
pub fn interesting() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        4 => prop::sample::select(vec![
            0u64,
            1,
            2,
            3,
            4,
            7,
            8,
            16,
            31,
            32,
            33,
            63,
            64,
            127,
            128,
            255,
            256,
            320,
            4095,
            4096,
            65535,
            65536,
            (1 << 31) - 1,
            1 << 31,
            u32::MAX as u64,
            1 << 32,
            1 << 40,
            1_000_000_000_000,
            (1 << 62) + 1,
            i64::MAX as u64,
            1 << 63,
            u64::MAX - 1,
            u64::MAX,
        ]),
        1 => 0u64..1024,
        1 => any::<u64>(),
    ]
}

fn pos() -> impl Strategy<Value = Pos> {
    (prop::bool::weighted(0.8), any::<Index>()).prop_map(|(focus, at)| Pos { focus, at })
}

/// One mutation; `Field` mostly when the format has fields (`with_fields`; without them it is
/// rare, and a no-op).
pub fn byte_mutation(with_fields: bool) -> impl Strategy<Value = ByteMutation> {
    let width = prop::sample::select(vec![1u8, 2, 4, 8]);
    let field_weight = if with_fields { 6 } else { 1 };
    prop_oneof![
        3 => (pos(), 0u8..8).prop_map(|(p, b)| ByteMutation::Flip(p, b)),
        2 => (pos(), any::<u8>()).prop_map(|(p, b)| ByteMutation::Set(p, b)),
        3 => (pos(), width, interesting()).prop_map(|(p, w, v)| ByteMutation::Int(p, w, v)),
        1 => (pos(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, b)| ByteMutation::Insert(p, b)),
        1 => (pos(), 1usize..64).prop_map(|(p, n)| ByteMutation::Delete(p, n)),
        1 => (pos(), pos(), 1usize..64).prop_map(|(a, b, n)| ByteMutation::Copy(a, b, n)),
        1 => pos().prop_map(ByteMutation::Truncate),
        field_weight => (any::<Index>(), interesting()).prop_map(|(f, v)| ByteMutation::Field(f, v)),
    ]
}

/// Between one and `max` mutations.
pub fn byte_mutations(max: usize, with_fields: bool) -> impl Strategy<Value = Vec<ByteMutation>> {
    prop::collection::vec(byte_mutation(with_fields), 1..=max.max(1))
}

fn write_int(bytes: &mut [u8], at: usize, width: usize, value: u64) {
    let le = value.to_le_bytes();
    for (i, b) in le.iter().take(width).enumerate() {
        if let Some(slot) = bytes.get_mut(at + i) {
            *slot = *b;
        }
    }
}

/// Applies `mutations` in order. `focus` is the region most positions land in; `fields` the
/// format's integer fields (offsets in the unmutated input; a mutation that moved bytes before
/// one makes it land elsewhere, which is fine for fuzzing).
pub fn apply(
    bytes: &mut Vec<u8>,
    mutations: &[ByteMutation],
    focus: Range<usize>,
    fields: &[Field],
) {
    for m in mutations {
        let len = bytes.len();
        match m {
            ByteMutation::Flip(p, bit) => {
                if len > 0 {
                    let i = p.resolve(len, &focus);
                    bytes[i] ^= 1 << (bit % 8);
                }
            }
            ByteMutation::Set(p, b) => {
                if len > 0 {
                    let i = p.resolve(len, &focus);
                    bytes[i] = *b;
                }
            }
            ByteMutation::Int(p, w, v) => {
                let i = p.resolve(len, &focus);
                write_int(bytes, i, *w as usize, *v);
            }
            ByteMutation::Insert(p, b) => {
                let i = p.resolve(len, &focus).min(len);
                bytes.splice(i..i, b.iter().copied());
            }
            ByteMutation::Delete(p, n) => {
                if len > 0 {
                    let i = p.resolve(len, &focus);
                    bytes.drain(i..(i + n).min(len));
                }
            }
            ByteMutation::Copy(from, to, n) => {
                if len > 0 {
                    let (a, b) = (from.resolve(len, &focus), to.resolve(len, &focus));
                    let n = (*n).min(len - a).min(len - b);
                    bytes.copy_within(a..a + n, b);
                }
            }
            ByteMutation::Truncate(p) => {
                let i = p.resolve(len, &focus);
                bytes.truncate(i);
            }
            ByteMutation::Field(f, v) => {
                if !fields.is_empty() {
                    let field = fields[f.index(fields.len())];
                    write_int(bytes, field.offset, field.width, *v);
                }
            }
        }
    }
}
