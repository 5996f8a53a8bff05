//! Read buffers for large local files, used again rather than freed.
//!
//! A large upload reads its file a part at a time (8 MiB by default) into
//! buffers that live until their part is stored, on whichever thread sends
//! it. Freed through the system allocator, such buffers are kept by the
//! per-thread arenas they came from, and peak memory grew by a third over
//! what was in flight (four 1 GiB uploads: 400-470 MiB against about 290).
//! Forcing them back to the kernel instead (a fixed mmap threshold) costs a
//! page fault per 4 KiB on every reuse: 50% more system time. Here a
//! buffer whose bytes are all dropped goes back to a free list and the next
//! part is read into it.

use std::sync::Mutex;

use bytes::Bytes;

/// Bytes of free buffers kept at most: 32 parts of 8 MiB (the default
/// content budget of a run); parts larger than this are not kept at all.
const KEEP_BYTES: usize = 256 << 20;

/// The size of the buffers kept, and the buffers.
static FREE: Mutex<(usize, Vec<Vec<u8>>)> = Mutex::new((0, Vec::new()));

fn free() -> std::sync::MutexGuard<'static, (usize, Vec<Vec<u8>>)> {
    FREE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A buffer of exactly `len` bytes, from the free list when one of that
/// size is there. Its contents are whatever an earlier use left.
pub(crate) fn take(len: usize) -> Vec<u8> {
    let reused = {
        let mut free = free();
        if free.0 == len {
            free.1.pop()
        } else {
            None
        }
    };
    reused.unwrap_or_else(|| vec![0; len])
}

/// The first `filled` bytes of `buf`, which goes back to the free list once
/// the last of them is dropped.
pub(crate) fn freeze(buf: Vec<u8>, filled: usize) -> Bytes {
    Bytes::from_owner(Kept(buf)).slice(..filled)
}

/// Let every free buffer go (a run ended).
pub fn release() {
    let mut free = free();
    free.1.clear();
    free.1.shrink_to_fit();
}

struct Kept(Vec<u8>);

impl AsRef<[u8]> for Kept {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        let mut free = free();
        if free.0 != buf.len() {
            // Another part size: the old buffers are of no more use.
            free.1.clear();
            free.0 = buf.len();
        }
        if (free.1.len() + 1) * buf.len() <= KEEP_BYTES {
            free.1.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_once_their_last_bytes_are_dropped() {
        // A size no other test uses.
        let len = 3 * 1024 + 7;
        let mut buf = take(len);
        buf[..5].copy_from_slice(b"hello");
        let ptr = buf.as_ptr();
        let bytes = freeze(buf, 5);
        let part = bytes.slice(1..3);
        assert_eq!(&bytes[..], b"hello");
        drop(bytes);
        let other = take(len);
        assert_ne!(other.as_ptr(), ptr, "still in use by `part`");
        assert_eq!(&part[..], b"el");
        drop(part);
        let again = take(len);
        assert_eq!((again.as_ptr(), again.len()), (ptr, len), "the same buffer, whole");
    }
}
