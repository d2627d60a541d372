//! A terminal's output as viewers read it: the last `capacity` bytes, each byte numbered by
//! its offset in everything the program ever wrote, so a viewer that knows how far it got
//! asks for the rest, and one that fell further behind gets the whole buffer instead.

use std::collections::VecDeque;

/// The bounded tail of a byte stream with a running offset.
#[derive(Debug)]
pub struct Ring {
    bytes: VecDeque<u8>,
    capacity: usize,
    /// The offset one past the last byte written (the total written so far).
    end: u64,
}

/// What a reader gets: bytes starting at `offset`, and whether the offset it asked for was
/// gone (older than the buffer), so these do not follow what it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    pub offset: u64,
    pub bytes: Vec<u8>,
    pub reset: bool,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        Self {
            bytes: VecDeque::new(),
            capacity: capacity.max(1),
            end: 0,
        }
    }

    /// The saved tail of an ended terminal (its first byte at `offset`), to read as a ring.
    pub fn from_tail(offset: u64, tail: Vec<u8>) -> Self {
        Self {
            capacity: tail.len().max(1),
            end: offset + tail.len() as u64,
            bytes: tail.into(),
        }
    }

    /// Appends output, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        self.end += data.len() as u64;
        let data = &data[data.len().saturating_sub(self.capacity)..];
        let overflow = (self.bytes.len() + data.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.bytes.extend(data);
    }

    /// The offset of the oldest byte held.
    pub fn start(&self) -> u64 {
        self.end - self.bytes.len() as u64
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// What follows `offset`: the bytes from it to the end; from the start of the buffer
    /// (`reset`) when it is older than that, or beyond the end (a reader of another run).
    pub fn since(&self, offset: u64) -> Slice {
        let (from, reset) = if offset < self.start() || offset > self.end {
            (self.start(), offset != self.end)
        } else {
            (offset, false)
        };
        let skip = (from - self.start()) as usize;
        Slice {
            offset: from,
            bytes: self.bytes.iter().skip(skip).copied().collect(),
            reset,
        }
    }

    /// The last `max` bytes and the offset of the first of them (kept when a terminal ends).
    pub fn tail(&self, max: usize) -> (u64, Vec<u8>) {
        let from = self.end - (self.bytes.len().min(max)) as u64;
        (from, self.since(from).bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_count_every_byte_and_the_oldest_go_beyond_the_capacity() {
        let mut r = Ring::new(8);
        r.push(b"hello");
        assert_eq!((r.start(), r.end()), (0, 5));
        assert_eq!(r.since(0).bytes, b"hello");
        assert_eq!(r.since(3).bytes, b"lo");
        assert_eq!(r.since(5).bytes, b"");
        r.push(b" world");
        assert_eq!((r.start(), r.end()), (3, 11));
        assert_eq!(r.since(5).bytes, b" world");
        // What a reader missed that is gone: the whole buffer, marked.
        let gone = r.since(1);
        assert_eq!((gone.offset, gone.reset), (3, true));
        assert_eq!(gone.bytes, b"lo world");
        // One write larger than the whole buffer keeps its end.
        r.push(b"0123456789abcdef");
        assert_eq!((r.start(), r.end()), (19, 27));
        assert_eq!(r.since(0).bytes, b"89abcdef");
    }

    #[test]
    fn an_offset_beyond_the_end_gets_everything_and_the_tail_is_bounded() {
        let mut r = Ring::new(16);
        r.push(b"abcdef");
        let s = r.since(100);
        assert_eq!(
            (s.offset, s.reset, s.bytes.as_slice()),
            (0, true, &b"abcdef"[..])
        );
        assert!(!r.since(6).reset);
        assert_eq!(r.tail(4), (2, b"cdef".to_vec()));
        assert_eq!(r.tail(100), (0, b"abcdef".to_vec()));
        let saved = Ring::from_tail(2, b"cdef".to_vec());
        assert_eq!(saved.since(4).bytes, b"ef");
        assert!(saved.since(0).reset);
    }
}
