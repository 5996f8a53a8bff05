//! Checking content against the CRC32C a store recorded for it.
//!
//! An S3 store that was sent `x-amz-checksum-crc32c` keeps it: for a single
//! PUT it is the CRC32C of the whole content; for a multipart upload it is
//! *composite*, the CRC32C of the big-endian CRC32Cs of the parts, written
//! `<base64>-<parts>`. Reading the content back, ferry computes the CRC32C
//! of every part-sized span as the bytes stream by (in any number of ranged
//! reads) and compares.
//!
//! A store may keep a CRC64NVME instead (what current AWS SDKs and the AWS
//! CLI send by default); it is always of the whole content, and readers of
//! ranges combine theirs the same way.
//!
//! Objects stored by other tools often carry neither (rclone, s3cmd and
//! older SDKs send no checksum), but an S3 store names an object stored by
//! one PUT with the MD5 of its content as ETag, which every listing shows:
//! objects are checked against it. A multipart object's ETag
//! (`<hex>-<parts>`) is the MD5 of its parts' MD5s: with the part size
//! (one HEAD of its first part) the content is checked part by part the
//! same way, which neither rclone nor the AWS CLI does. The ETags of
//! objects encrypted with SSE-KMS are not MD5s of the content.

use base64::Engine as _;

/// The CRC32C a store keeps for an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredCrc {
    /// Of the whole content.
    Whole(u32),
    /// Of the parts' CRC32Cs; the parts are `part_size` bytes but the last.
    Composite { crc: u32, parts: u64, part_size: u64 },
    /// The CRC64NVME of the whole content.
    Crc64Nvme(u64),
}

/// The MD5 an S3 ETag stands for: a quoted (or bare) string of 32 hex
/// digits, as a store names an object stored by one PUT. `None` for
/// anything else: a multipart object's `<hex>-<parts>`, a weak ETag, the
/// opaque ETags of other kinds of store.
pub(crate) fn md5_of_etag(etag: &str) -> Option<[u8; 16]> {
    match parse_md5_etag(etag)? {
        (md5, None) => Some(md5),
        (_, Some(_)) => None,
    }
}

/// An S3 ETag of the MD5 kind, quoted or bare: 32 hex digits, and for a
/// multipart object `-<parts>` (at least one).
fn parse_md5_etag(etag: &str) -> Option<([u8; 16], Option<u64>)> {
    let bare = etag.strip_prefix('"').and_then(|e| e.strip_suffix('"')).unwrap_or(etag);
    let (hex_digits, parts) = match bare.split_once('-') {
        Some((hex_digits, n)) => (hex_digits, Some(n.parse::<u64>().ok().filter(|&n| n > 0)?)),
        None => (bare, None),
    };
    let mut out = [0u8; 16];
    hex::decode_to_slice(hex_digits, &mut out).ok()?;
    Some((out, parts))
}

/// What a multipart object's ETag stands for: the MD5 of its parts' MD5s,
/// and the number of parts (`"<32 hex digits>-<parts>"`, quoted or bare).
pub(crate) fn md5_of_multipart_etag(etag: &str) -> Option<([u8; 16], u64)> {
    let (md5, parts) = parse_md5_etag(etag)?;
    Some((md5, parts?))
}

/// Content on its way, checked against an MD5 recorded for its object:
/// of the whole content, or of the MD5s of its parts (a multipart
/// object's ETag), in which case ranges that start and end on part
/// boundaries can be hashed apart and joined ([`Md5Check::for_range`]).
pub struct Md5Check {
    pub(crate) want: [u8; 16],
    /// Where `want` comes from: the object's ETag (which SSE-KMS makes
    /// something else than an MD5), or its metadata.
    pub(crate) from_etag: bool,
    hasher: md5::Md5,
    /// For a multipart ETag: the parts and what was read of them.
    parts: Option<PartMd5s>,
}

/// The MD5s of the parts of content fed in order.
#[derive(Clone)]
struct PartMd5s {
    /// The number of parts the ETag names.
    count: u64,
    /// Every part is this long but the last.
    part_size: u64,
    /// Digests of the parts read whole, in order.
    done: Vec<[u8; 16]>,
    /// Bytes fed into the part being read (hashed in `Md5Check::hasher`).
    in_part: u64,
}

impl Md5Check {
    pub(crate) fn new(want: [u8; 16], from_etag: bool) -> Self {
        Self { want, from_etag, hasher: md5::Digest::new(), parts: None }
    }

    /// A check against a multipart ETag: `want` is the MD5 of the MD5s of
    /// `count` parts of `part_size` bytes but the last.
    pub(crate) fn of_parts(want: [u8; 16], count: u64, part_size: u64) -> Self {
        let parts = PartMd5s { count, part_size, done: Vec::new(), in_part: 0 };
        Self { parts: Some(parts), ..Self::new(want, true) }
    }

    /// The part size, for a multipart ETag: ranges hashed apart must start
    /// and end on its multiples. `None` when the content must be fed whole
    /// and in order.
    pub fn part_size(&self) -> Option<u64> {
        self.parts.as_ref().map(|p| p.part_size)
    }

    /// A check of the same object for a range that starts on a part
    /// boundary (after the last part read whole, for a whole-content MD5:
    /// at 0), to be joined with [`Md5Check::append`].
    pub fn for_range(&self) -> Self {
        let parts = self.parts.as_ref().map(|p| PartMd5s { done: Vec::new(), in_part: 0, ..p.clone() });
        Self { parts, ..Self::new(self.want, self.from_etag) }
    }

    /// Feed the content in order.
    pub fn update(&mut self, mut data: &[u8]) {
        let Some(parts) = &mut self.parts else {
            md5::Digest::update(&mut self.hasher, data);
            return;
        };
        while !data.is_empty() {
            let n = (parts.part_size - parts.in_part).min(data.len() as u64) as usize;
            md5::Digest::update(&mut self.hasher, &data[..n]);
            parts.in_part += n as u64;
            data = &data[n..];
            if parts.in_part == parts.part_size {
                parts.done.push(md5::Digest::finalize_reset(&mut self.hasher).into());
                parts.in_part = 0;
            }
        }
    }

    /// Join what was read of the range that follows this one (which
    /// begins on a part boundary; for a whole-content MD5, this one must
    /// have been fed nothing).
    pub fn append(&mut self, mut next: Md5Check) {
        match (&mut self.parts, next.parts.take()) {
            (Some(mine), Some(theirs)) => {
                mine.close(&mut self.hasher);
                mine.done.extend(theirs.closed(next.hasher));
            }
            _ => self.hasher = next.hasher,
        }
    }

    /// The MD5 read, and for a multipart ETag the number of parts read.
    pub(crate) fn finish(mut self) -> ([u8; 16], Option<u64>) {
        let Some(parts) = self.parts.take() else { return (md5::Digest::finalize(self.hasher).into(), None) };
        let done = parts.closed(self.hasher);
        let mut of_parts: md5::Md5 = md5::Digest::new();
        for d in &done {
            md5::Digest::update(&mut of_parts, d);
        }
        (md5::Digest::finalize(of_parts).into(), Some(done.len() as u64))
    }

    /// The layout a multipart ETag was checked with: (parts, part size).
    pub(crate) fn layout(&self) -> Option<(u64, u64)> {
        self.parts.as_ref().map(|p| (p.count, p.part_size))
    }
}

impl PartMd5s {
    /// The part being read ends here (the content's last part).
    fn close(&mut self, hasher: &mut md5::Md5) {
        if self.in_part > 0 {
            self.done.push(md5::Digest::finalize_reset(hasher).into());
            self.in_part = 0;
        }
    }

    fn closed(mut self, mut hasher: md5::Md5) -> Vec<[u8; 16]> {
        self.close(&mut hasher);
        self.done
    }
}

/// Whether `parts` parts of `part_size` bytes but the last (which holds at
/// least one byte) make `size` bytes.
pub(crate) fn layout_holds(parts: u64, part_size: u64, size: u64) -> bool {
    let Some(full) = parts.checked_sub(1).and_then(|n| n.checked_mul(part_size)) else { return false };
    full < size && full.checked_add(part_size).is_some_and(|all| size <= all)
}

/// A running CRC64NVME.
fn crc64nvme_digest() -> crc_fast::Digest {
    crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme)
}

impl StoredCrc {
    /// What a HEAD with `x-amz-checksum-mode: ENABLED` says: the CRC and,
    /// for a composite one, the number of parts; `None` when the answer is
    /// missing or does not hang together. `value` is `x-amz-checksum-crc32c`,
    /// `kind` is `x-amz-checksum-type`, `etag` the object's ETag, whose
    /// `-<parts>` suffix marks a multipart object. A multipart object's
    /// checksum is taken as the whole content's only when the store says it
    /// is (`FULL_OBJECT`), and a composite one only with the part count the
    /// ETag has: some stores (moto) answer composite values without their
    /// part count.
    pub(crate) fn from_head(
        value: &str,
        kind: Option<&str>,
        etag: Option<&str>,
    ) -> Option<(u32, Option<u64>)> {
        let (crc, parts) = Self::parse_header(value)?;
        let etag_parts = etag
            .map(|e| e.trim_matches('"'))
            .and_then(|e| e.rsplit_once('-'))
            .and_then(|(_, n)| n.parse::<u64>().ok());
        match (parts, etag_parts) {
            (Some(n), Some(m)) if n != m => None,
            (Some(n), _) => Some((crc, Some(n))),
            (None, Some(_)) if !kind.is_some_and(|k| k.eq_ignore_ascii_case("FULL_OBJECT")) => None,
            (None, _) => Some((crc, None)),
        }
    }

    /// `x-amz-checksum-crc64nvme` (always of the whole content).
    pub(crate) fn from_crc64nvme_header(value: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(value.trim()).ok()?;
        Some(StoredCrc::Crc64Nvme(u64::from_be_bytes(bytes.try_into().ok()?)))
    }

    /// `x-amz-checksum-crc32c`: the CRC and, for a composite one, the
    /// number of parts.
    fn parse_header(value: &str) -> Option<(u32, Option<u64>)> {
        let (b64, parts) = match value.split_once('-') {
            Some((b64, n)) => (b64, Some(n.parse::<u64>().ok().filter(|&n| n > 0)?)),
            None => (value, None),
        };
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
        let crc = u32::from_be_bytes(bytes.try_into().ok()?);
        Some((crc, parts))
    }

    /// A composite CRC over `parts` parts of `part_size` bytes but the last,
    /// if that layout can hold `size` bytes.
    pub(crate) fn composite(crc: u32, parts: u64, part_size: u64, size: u64) -> Option<Self> {
        layout_holds(parts, part_size, size).then_some(StoredCrc::Composite { crc, parts, part_size })
    }

    /// The span over which a reader must compute CRCs: the part size.
    pub fn part_size(&self) -> Option<u64> {
        match self {
            StoredCrc::Whole(_) | StoredCrc::Crc64Nvme(_) => None,
            StoredCrc::Composite { part_size, .. } => Some(*part_size),
        }
    }

    /// Compare with what was read: the CRC32C of the whole content, and
    /// the part CRCs when this is composite (or their CRC64NVME, fed to
    /// readers made with [`PartCrcs::for_stored`]). `Err((stored, read))`
    /// on a mismatch, both as they are shown to users.
    pub fn check(&self, whole: u32, parts: Option<&PartCrcs>) -> Result<(), (String, String)> {
        match *self {
            StoredCrc::Crc64Nvme(want) => match parts.and_then(PartCrcs::crc64nvme) {
                Some(got) if got == want => Ok(()),
                Some(got) => Err((format!("crc64nvme {want:016x}"), format!("crc64nvme {got:016x}"))),
                None => {
                    Err((format!("crc64nvme {want:016x}"), "content that does not cover the object".into()))
                }
            },
            StoredCrc::Whole(want) if want == whole => Ok(()),
            StoredCrc::Whole(want) => Err((format!("crc32c {want:08x}"), format!("crc32c {whole:08x}"))),
            StoredCrc::Composite { crc, parts: n, part_size } => {
                let got = parts.filter(|p| p.part_size == part_size).and_then(PartCrcs::composite);
                match got {
                    Some((c, m)) if (c, m) == (crc, n) => Ok(()),
                    other => {
                        let read = match other {
                            Some((c, m)) => format!("crc32c {c:08x}-{m}"),
                            None => "parts that do not cover the object".to_string(),
                        };
                        Err((format!("crc32c {crc:08x}-{n} (parts of {part_size} bytes)"), read))
                    }
                }
            }
        }
    }
}

/// CRC32Cs of the part-sized spans of content fed in order, possibly
/// starting anywhere (one ranged read); readers of adjacent ranges are
/// joined with [`PartCrcs::append`].
#[derive(Debug, Clone)]
pub struct PartCrcs {
    part_size: u64,
    /// (part index, CRC32C, bytes) of consecutive spans, each within one part.
    spans: Vec<(u64, u32, u64)>,
    /// Where the next byte fed is expected.
    next: Option<u64>,
    /// The CRC64NVME of all the content fed, when asked for; `None` inside
    /// once a gap made it meaningless.
    crc64: Option<Option<crc_fast::Digest>>,
}

impl PartCrcs {
    /// # Panics
    /// If `part_size` is 0.
    pub fn new(part_size: u64) -> Self {
        assert!(part_size > 0, "part size 0");
        PartCrcs { part_size, spans: Vec::new(), next: None, crc64: None }
    }

    /// What a reader needs to check content against `stored`: its parts,
    /// and the CRC64NVME too when that is what the store kept.
    pub fn for_stored(stored: Option<&StoredCrc>) -> Self {
        let mut p = Self::for_parts(stored.and_then(StoredCrc::part_size));
        if matches!(stored, Some(StoredCrc::Crc64Nvme(_))) {
            p.crc64 = Some(Some(crc64nvme_digest()));
        }
        p
    }

    /// A reader for the range that follows this one, computing the same.
    pub fn next_range(&self) -> Self {
        let mut p = Self::new(self.part_size);
        p.crc64 = self.crc64.map(|_| Some(crc64nvme_digest()));
        p
    }

    /// The CRC64NVME of everything fed, when it was asked for and no gap
    /// broke it.
    fn crc64nvme(&self) -> Option<u64> {
        self.crc64.flatten().map(|d| d.finalize())
    }

    /// Parts of `part_size` when there is one to check against, else the
    /// content as one span: readers feed it the same way either way and
    /// take [`PartCrcs::whole`].
    pub fn for_parts(part_size: Option<u64>) -> Self {
        Self::new(part_size.unwrap_or(u64::MAX))
    }

    /// Feed the bytes at `offset`, which must follow what was fed before.
    pub fn update(&mut self, mut offset: u64, mut data: &[u8]) {
        if self.next.is_some_and(|n| n != offset) {
            // A gap or overlap: nothing composite can be claimed any more.
            self.spans.push((u64::MAX, 0, 0));
            if let Some(c) = &mut self.crc64 {
                *c = None;
            }
        }
        if let Some(Some(digest)) = &mut self.crc64 {
            digest.update(data);
        }
        while !data.is_empty() {
            let part = offset / self.part_size;
            let room = (part + 1) * self.part_size - offset;
            let n = room.min(data.len() as u64) as usize;
            let (here, rest) = data.split_at(n);
            match self.spans.last_mut() {
                Some((p, crc, len)) if *p == part => {
                    *crc = crc32c::crc32c_append(*crc, here);
                    *len += n as u64;
                }
                _ => self.spans.push((part, crc32c::crc32c(here), n as u64)),
            }
            offset += n as u64;
            data = rest;
        }
        self.next = Some(offset);
    }

    /// Join the spans of the range that follows this one.
    pub fn append(&mut self, next: PartCrcs) {
        if let Some(mine) = &mut self.crc64 {
            *mine = match (*mine, next.crc64.flatten()) {
                (Some(mut a), Some(b)) => {
                    a.combine(&b);
                    Some(a)
                }
                _ => None,
            };
        }
        for (part, crc, len) in next.spans {
            match self.spans.last_mut() {
                Some((p, c, l)) if *p == part => {
                    *c = crc32c::crc32c_combine(*c, crc, len as usize);
                    *l += len;
                }
                _ => self.spans.push((part, crc, len)),
            }
        }
        self.next = next.next.or(self.next);
    }

    /// The CRC32C of all the content fed, from the spans' (so that a
    /// reader computes each byte's CRC once).
    pub fn whole(&self) -> u32 {
        let mut spans = self.spans.iter();
        let first = spans.next().map_or(0, |&(_, crc, _)| crc);
        spans.fold(first, |acc, &(_, crc, len)| crc32c::crc32c_combine(acc, crc, len as usize))
    }

    /// The composite CRC and the number of parts, if the spans are parts
    /// 0, 1, … in order, each whole but the last.
    fn composite(&self) -> Option<(u32, u64)> {
        let mut bytes = Vec::with_capacity(self.spans.len() * 4);
        for (i, &(part, crc, len)) in self.spans.iter().enumerate() {
            let last = i + 1 == self.spans.len();
            if part != i as u64 || len == 0 || (!last && len != self.part_size) {
                return None;
            }
            bytes.extend_from_slice(&crc.to_be_bytes());
        }
        Some((crc32c::crc32c(&bytes), self.spans.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(crc: u32) -> String {
        base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
    }

    /// The composite CRC as S3 defines it, computed from whole parts.
    fn reference(data: &[u8], part_size: usize) -> (u32, u64) {
        let crcs: Vec<u8> = data.chunks(part_size).flat_map(|p| crc32c::crc32c(p).to_be_bytes()).collect();
        (crc32c::crc32c(&crcs), data.chunks(part_size).count() as u64)
    }

    #[test]
    fn headers_parse_whole_and_composite() {
        assert_eq!(StoredCrc::parse_header(&b64(0xdeadbeef)), Some((0xdeadbeef, None)));
        assert_eq!(StoredCrc::parse_header(&format!("{}-128", b64(7))), Some((7, Some(128))));
        assert_eq!(StoredCrc::parse_header("not base64"), None);
        assert_eq!(StoredCrc::parse_header(&format!("{}-0", b64(7))), None);
        assert_eq!(StoredCrc::parse_header("AAAAAAAA"), None, "six bytes are not a CRC32C");
    }

    #[test]
    fn only_single_part_etags_stand_for_an_md5() {
        let md5 = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 0, 0, 0, 0, 0, 0xff, 0x0f];
        assert_eq!(md5_of_etag("\"0123456789abcdef000000000000ff0f\""), Some(md5));
        assert_eq!(md5_of_etag("0123456789ABCDEF000000000000FF0F"), Some(md5));
        for not_md5 in [
            "\"0123456789abcdef000000000000ff0f-3\"",
            "W/\"0123456789abcdef000000000000ff0f\"",
            "\"0123456789abcdef000000000000ff0\"",
            "\"0x8DC2F3A1B2C3D4E\"",
            "\"0123456789abcdef000000000000ff0g\"",
            "",
        ] {
            assert_eq!(md5_of_etag(not_md5), None, "{not_md5}");
        }
    }

    #[test]
    fn multipart_etags_stand_for_the_md5_of_their_parts() {
        let md5 = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 0, 0, 0, 0, 0, 0xff, 0x0f];
        assert_eq!(md5_of_multipart_etag("\"0123456789abcdef000000000000ff0f-3\""), Some((md5, 3)));
        assert_eq!(md5_of_multipart_etag("0123456789abcdef000000000000ff0f-10000"), Some((md5, 10_000)));
        for not_multipart in [
            "\"0123456789abcdef000000000000ff0f\"",
            "\"0123456789abcdef000000000000ff0f-0\"",
            "\"0123456789abcdef000000000000ff0f-x\"",
            "\"0123456789abcdef000000000000ff0-3\"",
            "W/\"0123456789abcdef000000000000ff0f-3\"",
            "-3",
        ] {
            assert_eq!(md5_of_multipart_etag(not_multipart), None, "{not_multipart}");
        }
    }

    /// The MD5 of the parts' MD5s, as S3 names a multipart object.
    fn md5_of_parts(data: &[u8], part_size: usize) -> [u8; 16] {
        use md5::Digest as _;
        let digests: Vec<u8> = data.chunks(part_size).flat_map(|p| md5::Md5::digest(p).to_vec()).collect();
        md5::Md5::digest(&digests).into()
    }

    #[test]
    fn parts_hashed_in_any_chunks_and_whole_part_ranges_give_the_etag() {
        let data: Vec<u8> = (0..3_500u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
        let want = md5_of_parts(&data, 1000);
        // In order, in chunks that do not line up with the parts.
        for chunk in [1, 7, 999, 1000, 1001, 4096] {
            let mut c = Md5Check::of_parts(want, 4, 1000);
            data.chunks(chunk).for_each(|piece| c.update(piece));
            assert_eq!(c.finish(), (want, Some(4)), "chunks of {chunk}");
        }
        // Ranges of whole parts, hashed apart and joined in order.
        let base = Md5Check::of_parts(want, 4, 1000);
        assert_eq!(base.part_size(), Some(1000));
        let mut all = base.for_range();
        for range in [&data[..2000], &data[2000..3000], &data[3000..]] {
            let mut r = base.for_range();
            range.chunks(300).for_each(|piece| r.update(piece));
            all.append(r);
        }
        assert_eq!(all.finish(), (want, Some(4)));
        // A changed byte, a missing part, a different part size: not it.
        let mut bad = data.clone();
        bad[1500] ^= 1;
        let mut c = Md5Check::of_parts(want, 4, 1000);
        c.update(&bad);
        assert_ne!(c.finish().0, want);
        let mut c = Md5Check::of_parts(want, 4, 1000);
        c.update(&data[..3000]);
        assert_eq!(c.finish().1, Some(3));
        let mut c = Md5Check::of_parts(want, 4, 1200);
        c.update(&data);
        assert_ne!(c.finish().0, want);
        // A whole-content MD5 is fed whole: one range from the start.
        let whole: [u8; 16] =
            md5::Digest::finalize(md5::Digest::chain_update(md5::Md5::default(), &data)).into();
        let check = Md5Check::new(whole, false);
        assert_eq!(check.part_size(), None);
        let (mut joined, mut r) = (check.for_range(), check.for_range());
        r.update(&data);
        joined.append(r);
        assert_eq!(joined.finish(), (whole, None));
    }

    #[test]
    fn head_answers_are_taken_only_when_they_agree_with_the_etag() {
        let whole = b64(9);
        let composite = format!("{}-3", b64(9));
        let md5 = Some("\"0123456789abcdef0123456789abcdef\"");
        let multipart = Some("\"0123456789abcdef0123456789abcdef-3\"");
        assert_eq!(StoredCrc::from_head(&whole, None, md5), Some((9, None)));
        assert_eq!(StoredCrc::from_head(&whole, Some("FULL_OBJECT"), md5), Some((9, None)));
        assert_eq!(StoredCrc::from_head(&composite, Some("COMPOSITE"), multipart), Some((9, Some(3))));
        assert_eq!(StoredCrc::from_head(&composite, None, None), Some((9, Some(3))));
        // A multipart object's full-object checksum, said so (AWS).
        assert_eq!(StoredCrc::from_head(&whole, Some("FULL_OBJECT"), multipart), Some((9, None)));
        // moto: a composite value without its part count.
        assert_eq!(StoredCrc::from_head(&whole, Some("COMPOSITE"), multipart), None);
        assert_eq!(StoredCrc::from_head(&whole, None, multipart), None);
        // A part count the ETag disagrees with.
        assert_eq!(StoredCrc::from_head(&format!("{}-2", b64(9)), None, multipart), None);
    }

    #[test]
    fn a_layout_must_hold_the_size() {
        assert!(StoredCrc::composite(1, 3, 10, 21).is_some());
        assert!(StoredCrc::composite(1, 3, 10, 30).is_some());
        assert!(StoredCrc::composite(1, 3, 10, 20).is_none(), "the last part would be empty");
        assert!(StoredCrc::composite(1, 3, 10, 31).is_none());
        assert!(StoredCrc::composite(1, u64::MAX, u64::MAX, 1).is_none());
    }

    #[test]
    fn ranges_cut_anywhere_give_the_composite_of_whole_parts() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for part_size in [1_000usize, 1_024, 3_333, 10_000] {
            let (want, n) = reference(&data, part_size);
            let stored = StoredCrc::composite(want, n, part_size as u64, data.len() as u64).unwrap();
            // Four ranges as the downloader cuts them, each fed in uneven chunks.
            let mut joined: Option<PartCrcs> = None;
            for r in [0..2_500usize, 2_500..5_000, 5_000..7_500, 7_500..10_000] {
                let mut p = PartCrcs::new(part_size as u64);
                let mut off = r.start;
                for chunk in data[r.clone()].chunks(777) {
                    p.update(off as u64, chunk);
                    off += chunk.len();
                }
                match &mut joined {
                    None => joined = Some(p),
                    Some(j) => j.append(p),
                }
            }
            let whole = crc32c::crc32c(&data);
            assert_eq!(joined.as_ref().unwrap().whole(), whole, "part size {part_size}");
            let mut unsplit = PartCrcs::for_parts(None);
            unsplit.update(0, &data[..3_000]);
            unsplit.update(3_000, &data[3_000..]);
            assert_eq!(unsplit.whole(), whole);
            assert_eq!(stored.check(whole, joined.as_ref()), Ok(()), "part size {part_size}");
            // One byte changed anywhere is caught.
            let mut bad = data.clone();
            bad[4_321] ^= 1;
            let mut p = PartCrcs::new(part_size as u64);
            p.update(0, &bad);
            assert!(stored.check(crc32c::crc32c(&bad), Some(&p)).is_err());
        }
    }

    fn crc64nvme(data: &[u8]) -> u64 {
        crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data)
    }

    #[test]
    fn crc64nvme_of_ranges_cut_anywhere_is_that_of_the_whole() {
        assert_eq!(crc64nvme(b"123456789"), 0xae8b_1486_0a79_9888, "the CRC-64/NVME check value");
        let header = base64::engine::general_purpose::STANDARD.encode(0xae8b_1486_0a79_9888u64.to_be_bytes());
        assert_eq!(
            StoredCrc::from_crc64nvme_header(&header),
            Some(StoredCrc::Crc64Nvme(0xae8b_1486_0a79_9888))
        );
        assert_eq!(StoredCrc::from_crc64nvme_header(&b64(7)), None, "four bytes are not a CRC64NVME");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 13 % 253) as u8).collect();
        let stored = StoredCrc::Crc64Nvme(crc64nvme(&data));
        assert_eq!(stored.part_size(), None);
        let first = PartCrcs::for_stored(Some(&stored));
        let mut joined = first.next_range();
        for r in [0..2_500usize, 2_500..5_000, 5_000..7_501, 7_501..10_000] {
            let mut p = first.next_range();
            let mut off = r.start;
            for chunk in data[r].chunks(777) {
                p.update(off as u64, chunk);
                off += chunk.len();
            }
            joined.append(p);
        }
        let whole = crc32c::crc32c(&data);
        assert_eq!(joined.whole(), whole);
        assert_eq!(stored.check(whole, Some(&joined)), Ok(()));
        // A reader not asked for the CRC64NVME cannot vouch for it.
        let mut plain = PartCrcs::for_parts(None);
        plain.update(0, &data);
        assert!(stored.check(whole, Some(&plain)).unwrap_err().1.contains("does not cover"));
        // One byte changed, or a gap, fails.
        let mut bad = data.clone();
        bad[9_999] ^= 0x10;
        let mut p = PartCrcs::for_stored(Some(&stored));
        p.update(0, &bad);
        assert!(stored.check(crc32c::crc32c(&bad), Some(&p)).unwrap_err().0.starts_with("crc64nvme "));
        let mut gap = PartCrcs::for_stored(Some(&stored));
        gap.update(0, &data[..100]);
        gap.update(200, &data[200..]);
        assert!(stored.check(whole, Some(&gap)).is_err());
    }

    #[test]
    fn gaps_wrong_part_sizes_and_whole_mismatches_fail() {
        let data = vec![5u8; 3_000];
        let (want, n) = reference(&data, 1_000);
        let stored = StoredCrc::composite(want, n, 1_000, 3_000).unwrap();
        let mut gap = PartCrcs::new(1_000);
        gap.update(0, &data[..1_000]);
        gap.update(1_500, &data[1_500..]);
        let (_, read) = stored.check(0, Some(&gap)).unwrap_err();
        assert!(read.contains("do not cover"), "{read}");
        let mut other = PartCrcs::new(500);
        other.update(0, &data);
        assert!(stored.check(0, Some(&other)).is_err());
        assert!(stored.check(0, None).is_err());
        let whole = StoredCrc::Whole(crc32c::crc32c(&data));
        assert_eq!(whole.check(crc32c::crc32c(&data), None), Ok(()));
        assert_eq!(whole.check(1, None).unwrap_err().1, "crc32c 00000001");
    }
}
