//! POSIX attributes stored in object user metadata.
//!
//! ferry writes the scheme used by FSx for Lustre, DataSync and File Gateway
//! (`x-amz-meta-file-permissions`, `-file-owner`, `-file-group`, `-file-mtime`)
//! and reads it plus rclone's (`mtime` decimal seconds from its S3 backend or
//! RFC 3339, `mode` octal, `uid`, `gid`, and `md5chksum`)
//! and s3fs-fuse's (`mtime` seconds, `mode` decimal, `uid`, `gid`). Keys here
//! carry no `x-amz-meta-` prefix: OpenDAL adds and strips it.
//!
//! Values are never trusted blindly: set-id bits, the "nobody" id 4294967295,
//! negative or far-future times and unparsable numbers are dropped and
//! reported as warnings.

use std::collections::HashMap;

use ferry_model::{EntryKind, PosixMeta};

pub const KEY_PERMISSIONS: &str = "file-permissions";
pub const KEY_OWNER: &str = "file-owner";
pub const KEY_GROUP: &str = "file-group";
pub const KEY_MTIME: &str = "file-mtime";
pub const KEY_ATIME: &str = "file-atime";
/// rclone's MD5 of the content (read only).
const KEY_RCLONE_MD5: &str = "md5chksum";
pub const KEY_USER_AGENT: &str = "user-agent";
/// ferry's own addition: the CRC32C of the content, `crc32c:<8 hex digits>`.
pub const KEY_CHECKSUM: &str = "file-checksum";

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const SETID_BITS: u32 = 0o6000;
/// Times more than a day ahead of the clock are not believed.
const FUTURE_SLACK_NS: i64 = 86_400 * 1_000_000_000;

/// The metadata map ferry writes for an entry.
pub fn encode(kind: EntryKind, meta: &PosixMeta, crc32c: Option<u32>) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let type_bits = match kind {
        EntryKind::File => S_IFREG,
        EntryKind::Dir => S_IFDIR,
        EntryKind::Symlink => S_IFLNK,
    };
    let perm = meta.mode.unwrap_or(match kind {
        EntryKind::File => 0o644,
        EntryKind::Dir => 0o755,
        EntryKind::Symlink => 0o777,
    });
    map.insert(KEY_PERMISSIONS.into(), format!("{:07o}", type_bits | (perm & 0o7777)));
    if let Some(uid) = meta.uid {
        map.insert(KEY_OWNER.into(), uid.to_string());
    }
    if let Some(gid) = meta.gid {
        map.insert(KEY_GROUP.into(), gid.to_string());
    }
    if let Some(ns) = meta.mtime_ns {
        map.insert(KEY_MTIME.into(), format!("{ns}ns"));
    }
    if let Some(ns) = meta.atime_ns {
        map.insert(KEY_ATIME.into(), format!("{ns}ns"));
    }
    if let Some(crc) = crc32c {
        map.insert(KEY_CHECKSUM.into(), format!("crc32c:{crc:08x}"));
    }
    map.insert(KEY_USER_AGENT.into(), concat!("ferry/", env!("CARGO_PKG_VERSION")).into());
    map
}

/// What an object's metadata says about the entry it stands for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The kind from the type bits, when the metadata has a mode.
    pub kind: Option<EntryKind>,
    pub meta: PosixMeta,
    pub crc32c: Option<u32>,
    /// rclone's `md5chksum`: the base64 MD5 of the content, which it writes
    /// on its multipart uploads (whose ETags are no MD5).
    pub md5: Option<[u8; 16]>,
    /// Values that were present but dropped, one sentence each.
    pub warnings: Vec<String>,
}

/// Read attributes from metadata, trying ferry/FSx keys first, then rclone's
/// and s3fs's. `now_ns` bounds believable modification times.
pub fn decode<'a>(get: impl Fn(&str) -> Option<&'a str>, now_ns: i64) -> Decoded {
    let mut out = Decoded::default();
    let warn = |out: &mut Decoded, key: &str, value: &str, why: &str| {
        out.warnings.push(format!("metadata {key}={value:?} ignored: {why}"));
    };

    // Mode: FSx octal with type bits; rclone octal with type bits
    // (`100644`); s3fs decimal (`33188`). rclone's S3 backend writes `mtime`
    // as decimal seconds as s3fs does, but with `-M` also `btime` (RFC
    // 3339); a value that makes no file type in one radix is read in the
    // other (`100644` is no mode in decimal, `33188` no number in octal).
    let rclone_style = get("mtime").is_some_and(|v| v.contains('T')) || get("btime").is_some();
    let mode_source = if let Some(v) = get(KEY_PERMISSIONS) {
        Some((KEY_PERMISSIONS, v, 8))
    } else {
        get("mode").map(|v| {
            let typed = |radix: u32| {
                u32::from_str_radix(v.trim(), radix)
                    .is_ok_and(|raw| raw <= 0o177777 && matches!(raw & S_IFMT, S_IFDIR | S_IFLNK | S_IFREG))
            };
            let (hinted, other) = if rclone_style { (8, 10) } else { (10, 8) };
            ("mode", v, if !typed(hinted) && typed(other) { other } else { hinted })
        })
    };
    if let Some((key, value, radix)) = mode_source {
        match u32::from_str_radix(value.trim(), radix) {
            Ok(raw) if raw <= 0o177777 => {
                let type_bits = raw & S_IFMT;
                out.kind = match type_bits {
                    S_IFDIR => Some(EntryKind::Dir),
                    S_IFLNK => Some(EntryKind::Symlink),
                    S_IFREG | 0 => Some(EntryKind::File),
                    _ => {
                        warn(&mut out, key, value, "not a file, directory or symlink type");
                        None
                    }
                };
                let mut perm = raw & 0o7777;
                if perm & SETID_BITS != 0 {
                    warn(&mut out, key, value, "set-user-id/set-group-id bits dropped");
                    perm &= !SETID_BITS;
                }
                out.meta.mode = Some(perm);
            }
            _ => warn(&mut out, key, value, "not a valid mode"),
        }
    }

    for (keys, slot) in [([KEY_OWNER, "uid"], 0usize), ([KEY_GROUP, "gid"], 1usize)] {
        let Some((key, value)) = keys.iter().find_map(|k| get(k).map(|v| (*k, v))) else {
            continue;
        };
        match value.trim().parse::<u32>() {
            Ok(id) if id != u32::MAX => {
                if slot == 0 {
                    out.meta.uid = Some(id);
                } else {
                    out.meta.gid = Some(id);
                }
            }
            Ok(_) => warn(&mut out, key, value, "4294967295 is not a valid id"),
            Err(_) => warn(&mut out, key, value, "not a number between 0 and 4294967294"),
        }
    }

    // Times: ferry/FSx `<ns>ns`, else rclone's or s3fs's.
    for (own, other, atime) in [(KEY_MTIME, "mtime", false), (KEY_ATIME, "atime", true)] {
        let time = match get(own) {
            Some(v) => Some((own, v, parse_ns_suffix(v))),
            None => get(other).map(|v| (other, v, parse_rclone_or_s3fs_mtime(v))),
        };
        let Some((key, value, parsed)) = time else { continue };
        match parsed {
            Some(ns) if ns < 0 => warn(&mut out, key, value, "before 1970"),
            Some(ns) if ns > now_ns.saturating_add(FUTURE_SLACK_NS) => {
                warn(&mut out, key, value, "in the future")
            }
            Some(ns) if atime => out.meta.atime_ns = Some(ns),
            Some(ns) => out.meta.mtime_ns = Some(ns),
            None => warn(&mut out, key, value, "not a valid time"),
        }
    }

    if let Some(v) = get(KEY_CHECKSUM) {
        match v.strip_prefix("crc32c:").and_then(|h| u32::from_str_radix(h, 16).ok()) {
            Some(crc) => out.crc32c = Some(crc),
            None => warn(&mut out, KEY_CHECKSUM, v, "not crc32c:<hex>"),
        }
    }
    if let Some(v) = get(KEY_RCLONE_MD5) {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(v.trim()).ok();
        match bytes.and_then(|b| <[u8; 16]>::try_from(b).ok()) {
            Some(md5) => out.md5 = Some(md5),
            None => warn(&mut out, KEY_RCLONE_MD5, v, "not the base64 of an MD5"),
        }
    }
    out
}

/// `1652204345123456789ns` (FSx), or plain nanoseconds.
fn parse_ns_suffix(v: &str) -> Option<i64> {
    v.trim().trim_end_matches("ns").parse::<i64>().ok()
}

/// RFC 3339 with fractional seconds (rclone's metadata), or decimal seconds
/// with an optional fraction (rclone's S3 backend, s3fs).
fn parse_rclone_or_s3fs_mtime(v: &str) -> Option<i64> {
    let v = v.trim();
    if v.contains('T') {
        let t = chrono::DateTime::parse_from_rfc3339(v).ok()?;
        return t.timestamp_nanos_opt();
    }
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut frac_ns: i64 = 0;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        frac_ns = format!("{digits:0<9}").parse().ok()?;
    }
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn dec(pairs: &[(&str, &str)]) -> Decoded {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        decode(|k| map.get(k).map(String::as_str), NOW)
    }

    #[test]
    fn round_trip_fsx_scheme() {
        let meta = PosixMeta {
            mode: Some(0o640),
            uid: Some(1000),
            gid: Some(100),
            mtime_ns: Some(1_652_204_345_123_456_789),
            atime_ns: Some(1_652_204_346_000_000_007),
        };
        let map = encode(EntryKind::File, &meta, Some(0xdeadbeef));
        assert_eq!(map[KEY_PERMISSIONS], "0100640");
        assert_eq!(map[KEY_MTIME], "1652204345123456789ns");
        assert_eq!(map[KEY_ATIME], "1652204346000000007ns");
        let back = decode(|k| map.get(k).map(String::as_str), NOW);
        assert_eq!(back.meta, meta);
        assert_eq!(back.kind, Some(EntryKind::File));
        assert_eq!(back.crc32c, Some(0xdeadbeef));
        assert!(back.warnings.is_empty());

        let map = encode(EntryKind::Dir, &PosixMeta::default(), None);
        assert_eq!(map[KEY_PERMISSIONS], "0040755");
        let map = encode(EntryKind::Symlink, &PosixMeta::default(), None);
        assert_eq!(map[KEY_PERMISSIONS], "0120777");
        assert_eq!(decode(|k| map.get(k).map(String::as_str), NOW).kind, Some(EntryKind::Symlink));
    }

    #[test]
    fn reads_rclone_metadata() {
        let d = dec(&[
            ("mtime", "2023-11-14T22:13:20.5+00:00"),
            ("mode", "100600"),
            ("uid", "501"),
            ("gid", "20"),
            ("md5chksum", "1B2M2Y8AsgTpgAmY7PhCfg=="),
        ]);
        assert_eq!(d.md5.map(hex::encode).as_deref(), Some("d41d8cd98f00b204e9800998ecf8427e"));
        assert_eq!(d.meta.mode, Some(0o600));
        assert_eq!(d.meta.uid, Some(501));
        assert_eq!(d.meta.gid, Some(20));
        assert_eq!(d.meta.mtime_ns, Some(1_700_000_000_500_000_000));
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        for bad in ["not base64!", "AAAA"] {
            let d = dec(&[("md5chksum", bad)]);
            assert_eq!(d.md5, None);
            let w = &d.warnings[0];
            assert!(w.contains("md5chksum") && w.contains("base64 of an MD5"), "{w}");
        }
    }

    #[test]
    fn reads_s3fs_metadata() {
        let d = dec(&[("mtime", "1700000000"), ("mode", "33188"), ("uid", "0"), ("gid", "0")]);
        assert_eq!(d.meta.mode, Some(0o644));
        assert_eq!(d.kind, Some(EntryKind::File));
        assert_eq!(d.meta.uid, Some(0));
        assert_eq!(d.meta.mtime_ns, Some(1_700_000_000_000_000_000));
        // As s3fs 1.90 wrote them on garage (read back with head-object):
        // decimal seconds with nanoseconds, atime and ctime beside.
        let times = "1614834367.123456789";
        for (mode, kind, perm) in [
            ("33184", EntryKind::File, 0o640),
            ("16872", EntryKind::Dir, 0o750),
            ("41471", EntryKind::Symlink, 0o777),
        ] {
            let d = dec(&[
                ("atime", times),
                ("ctime", times),
                ("gid", "0"),
                ("mode", mode),
                ("mtime", times),
                ("uid", "0"),
            ]);
            assert_eq!((d.kind, d.meta.mode), (Some(kind), Some(perm)), "{mode}");
            assert_eq!(d.meta.mtime_ns, Some(1_614_834_367_123_456_789));
            assert_eq!(d.meta.atime_ns, d.meta.mtime_ns);
            assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        }
    }

    /// What rclone's S3 backend writes with `-M` (read off an object it
    /// stored): `mtime` in decimal seconds, `mode` in octal.
    #[test]
    fn reads_what_rclones_s3_backend_writes() {
        let d = dec(&[
            ("atime", "2023-11-14T22:13:19.466200939Z"),
            ("btime", "2023-11-14T22:13:19.466200939Z"),
            ("gid", "0"),
            ("mode", "100644"),
            ("mtime", "1699999999.590200942"),
            ("uid", "0"),
        ]);
        assert_eq!((d.kind, d.meta.mode), (Some(EntryKind::File), Some(0o644)));
        assert_eq!(d.meta.mtime_ns, Some(1_699_999_999_590_200_942));
        assert_eq!(d.meta.atime_ns, Some(1_699_999_999_466_200_939));
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        // Without btime (rclone without -M writes only mtime; a mode from
        // elsewhere): the value decides.
        for (mode, kind, perm) in [
            ("100644", EntryKind::File, 0o644),
            ("40755", EntryKind::Dir, 0o755),
            ("120777", EntryKind::Symlink, 0o777),
            ("33204", EntryKind::File, 0o664),
            ("16877", EntryKind::Dir, 0o755),
        ] {
            let d = dec(&[("mtime", "1699999999.5"), ("mode", mode)]);
            assert_eq!((d.kind, d.meta.mode), (Some(kind), Some(perm)), "{mode}");
        }
    }

    #[test]
    fn hostile_values_are_dropped_and_reported() {
        let d = dec(&[
            (KEY_PERMISSIONS, "0104755"),
            (KEY_OWNER, "4294967295"),
            (KEY_GROUP, "-1"),
            (KEY_MTIME, "4102444800000000000ns"),
        ]);
        assert_eq!(d.meta.mode, Some(0o755), "setuid stripped");
        assert_eq!(d.meta.uid, None);
        assert_eq!(d.meta.gid, None);
        assert_eq!(d.meta.mtime_ns, None);
        assert_eq!(d.warnings.len(), 4, "{:?}", d.warnings);

        let d = dec(&[(KEY_PERMISSIONS, "7777x"), (KEY_MTIME, "-5ns")]);
        assert_eq!(d.meta, PosixMeta::default());
        assert_eq!(d.warnings.len(), 2);
    }
}
