//! The mutation engine: byte-level havoc (bit flips, interesting values,
//! inserted, deleted, duplicated and spliced chunks, dictionary tokens) plus
//! structure-aware tweaks for the formats the targets read: MessagePack
//! (length prefixes, integers, markers, nesting), length-prefixed frames,
//! wasm sections, JWTs (mutating the JSON inside and re-signing it), tar
//! headers (sizes, types, names, checksums, PAX records) inside gzip or not,
//! and line-oriented text.

use std::io::{Read, Write};

use crate::rng::Rng;

/// Which structure-aware mutations apply to a target's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Bytes with no structure the engine knows.
    Bytes,
    /// A sequence of frames: 4-byte big-endian length, MessagePack body.
    Frames,
    /// One MessagePack value.
    MsgPack,
    /// A wasm module or component carrying claims.
    Wasm,
    /// A JWT's text.
    Jwt,
    /// A tar archive, gzipped or not.
    Tar,
    /// Line-oriented text (TOML, HTTP).
    Text,
}

/// What the structure-aware mutations may call back into: re-signing
/// claims so that a mutated input still passes the signature check and
/// reaches the code behind it.
pub trait Signer {
    /// A JWT whose claims are `claims` (JSON), signed by a key of the
    /// harness, the issuer rewritten to match. `None` if it cannot be.
    fn sign_jwt(&self, header: &[u8], claims: &[u8]) -> Option<String>;
    /// The module re-signed with fresh claims for its current bytes.
    fn sign_wasm(&self, wasm: &[u8]) -> Option<Vec<u8>>;
    /// A `claims.jwt` for a provider archive whose binaries are `targets`
    /// (target, bytes).
    fn sign_par_claims(&self, targets: &[(String, Vec<u8>)]) -> Option<String>;
}

/// A signer that signs nothing (mutations that need one are skipped).
#[derive(Debug)]
pub struct NoSigner;

impl Signer for NoSigner {
    fn sign_jwt(&self, _: &[u8], _: &[u8]) -> Option<String> {
        None
    }
    fn sign_wasm(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn sign_par_claims(&self, _: &[(String, Vec<u8>)]) -> Option<String> {
        None
    }
}

/// Everything one mutation needs.
pub struct Mutator<'a> {
    pub rng: &'a mut Rng,
    pub shape: Shape,
    pub dict: &'a [&'a [u8]],
    pub max_len: usize,
    pub signer: &'a dyn Signer,
}

const INTERESTING_8: &[u8] = &[
    0, 1, 2, 0x0f, 0x10, 0x1f, 0x20, 0x7f, 0x80, 0x81, 0xc0, 0xc1, 0xfe, 0xff,
];
const INTERESTING_32: &[u32] = &[
    0,
    1,
    2,
    16,
    32,
    100,
    101,
    127,
    128,
    200,
    255,
    256,
    304,
    511,
    512,
    513,
    999,
    1000,
    1024,
    4096,
    32767,
    32768,
    32769,
    65535,
    65536,
    0x00ff_ffff,
    0x0100_0000,
    0x03ff_ffff,
    0x0400_0000,
    0x0400_0001,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
];
const INTERESTING_64: &[u64] = &[
    0,
    1,
    1 << 31,
    1 << 32,
    (1 << 53) + 1,
    i64::MAX as u64,
    1 << 63,
    (1 << 63) + 1,
    u64::MAX - 1,
    u64::MAX,
];

impl Mutator<'_> {
    /// A mutant of `input`; `other` is a second corpus entry to splice with.
    pub fn mutate(&mut self, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut data = input.to_vec();
        let most = if self.rng.one_in(3) { 8 } else { 3 };
        let rounds = 1 + self.rng.below(most);
        for _ in 0..rounds {
            let structured = self.shape != Shape::Bytes && !self.rng.one_in(3);
            let changed = structured && self.structured(&mut data);
            if !changed {
                self.havoc(&mut data, other);
            }
            if data.len() > self.max_len {
                data.truncate(self.max_len);
            }
        }
        if self.shape == Shape::Frames && !self.rng.one_in(4) {
            fix_frame_prefixes(&mut data);
        }
        data
    }

    fn structured(&mut self, data: &mut Vec<u8>) -> bool {
        match self.shape {
            Shape::Bytes => false,
            Shape::Frames => self.frames(data),
            Shape::MsgPack => self.msgpack_in(data, 0),
            Shape::Wasm => self.wasm(data),
            Shape::Jwt => self.jwt(data),
            Shape::Tar => self.tar(data),
            Shape::Text => self.text(data),
        }
    }

    // ------------------------------------------------------------ havoc

    fn havoc(&mut self, data: &mut Vec<u8>, other: &[u8]) {
        let rng = &mut *self.rng;
        let len = data.len();
        match rng.below(15) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = *rng.pick(INTERESTING_8);
            }
            2 if len > 1 => {
                let value = *rng.pick(INTERESTING_32);
                let width = *rng.pick(&[2usize, 4]);
                let i = rng.below(len.saturating_sub(width - 1).max(1));
                let bytes = value.to_be_bytes();
                let bytes = if rng.one_in(4) {
                    value.to_le_bytes()
                } else {
                    bytes
                };
                let src = if width == 2 { &bytes[2..] } else { &bytes[..] };
                for (k, b) in src.iter().enumerate() {
                    if let Some(slot) = data.get_mut(i + k) {
                        *slot = *b;
                    }
                }
            }
            3 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.byte();
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let delta = 1 + rng.below(35) as u8;
                data[i] = if rng.one_in(2) {
                    data[i].wrapping_add(delta)
                } else {
                    data[i].wrapping_sub(delta)
                };
            }
            5 => {
                let n = rng.small_len(64);
                let at = rng.below(len + 1);
                let chunk: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                data.splice(at..at, chunk);
            }
            6 => {
                let n = rng.small_len(4096);
                let at = rng.below(len + 1);
                let byte = if rng.one_in(2) {
                    *rng.pick(INTERESTING_8)
                } else {
                    rng.byte()
                };
                data.splice(at..at, std::iter::repeat_n(byte, n));
            }
            7 if len > 0 => {
                let at = rng.below(len);
                let n = rng.small_len(len - at);
                data.drain(at..at + n);
            }
            8 if len > 0 => {
                let from = rng.below(len);
                let n = rng.small_len(len - from);
                let chunk = data[from..from + n].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, chunk);
            }
            9 if len > 1 => {
                let from = rng.below(len);
                let n = rng.small_len(len - from);
                let chunk = data[from..from + n].to_vec();
                let to = rng.below(len);
                for (k, b) in chunk.into_iter().enumerate() {
                    if let Some(slot) = data.get_mut(to + k) {
                        *slot = b;
                    }
                }
            }
            10 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            11 if !self.dict.is_empty() => {
                let token = *rng.pick(self.dict);
                let at = rng.below(len + 1);
                if rng.one_in(2) || len == 0 {
                    data.splice(at..at, token.iter().copied());
                } else {
                    let end = (at + token.len()).min(len);
                    data.splice(at..end, token.iter().copied());
                }
            }
            12 if !self.dict.is_empty() => {
                // Deep nesting and long runs: the same token many times.
                let token = *rng.pick(self.dict);
                let most = *rng.pick(&[4usize, 64, 1100, 5000]);
                let times = 1 + rng.below(most);
                let at = rng.below(len + 1);
                let run: Vec<u8> = token.repeat(times);
                data.splice(at..at, run);
            }
            13 if len > 0 => {
                data.truncate(rng.below(len));
            }
            _ => {
                // An empty input, or a case that did not apply: grow it.
                let n = rng.small_len(16);
                for _ in 0..n {
                    data.push(rng.byte());
                }
            }
        }
    }

    // ------------------------------------------------------------ MessagePack

    /// Mutates the MessagePack value starting at `start`; false if there is
    /// none the scanner can read.
    fn msgpack_in(&mut self, data: &mut Vec<u8>, start: usize) -> bool {
        let mut sites = Vec::new();
        if scan_msgpack(data, start, 0, &mut sites).is_none() && sites.is_empty() {
            return false;
        }
        if sites.is_empty() {
            return false;
        }
        let site = *self.rng.pick(&sites);
        let rng = &mut *self.rng;
        match rng.below(6) {
            // A length (or an integer) rewritten in place.
            0..=2 if site.width > 0 => {
                let value: u64 = match rng.below(5) {
                    0 => 0,
                    1 => site.value.wrapping_add(1 + rng.below(3) as u64),
                    2 => site.value.saturating_sub(1 + rng.below(3) as u64),
                    3 => u64::from(*rng.pick(INTERESTING_32)),
                    _ => *rng.pick(INTERESTING_64),
                };
                write_be(data, site.field, site.width, value);
            }
            // A fix-family value (fixint, fixstr, fixarray, fixmap) given
            // another inline length.
            0..=2 => {
                let m = data[site.at];
                data[site.at] = match m {
                    0x80..=0x8f => 0x80 | (rng.byte() & 0x0f),
                    0x90..=0x9f => 0x90 | (rng.byte() & 0x0f),
                    0xa0..=0xbf => 0xa0 | (rng.byte() & 0x1f),
                    _ => *rng.pick(INTERESTING_8),
                };
            }
            // Type confusion: another marker at this value's head.
            3 => data[site.at] = *rng.pick(MARKERS),
            // Nesting: the value wrapped in many one-element arrays or maps.
            4 => {
                let most = *rng.pick(&[8usize, 300, 1100, 3000]);
                let times = 1 + rng.below(most);
                let wrap: &[u8] = if rng.one_in(2) {
                    &[0x91]
                } else {
                    &[0x81, 0xa0]
                };
                data.splice(site.at..site.at, wrap.repeat(times));
            }
            // A value duplicated right after itself.
            _ => {
                let end = site.end.min(data.len());
                let copy = data[site.at..end].to_vec();
                data.splice(end..end, copy);
            }
        }
        true
    }

    fn frames(&mut self, data: &mut Vec<u8>) -> bool {
        let frames = frame_bodies(data);
        if frames.is_empty() {
            return false;
        }
        let rng = &mut *self.rng;
        let (prefix_at, body_at, body_len) = *rng.pick(&frames);
        match rng.below(8) {
            // The length prefix itself: off by a little or a lot.
            0 => {
                let value = match rng.below(3) {
                    0 => (body_len as u64).wrapping_add(1 + rng.below(4) as u64),
                    1 => (body_len as u64).saturating_sub(1 + rng.below(4) as u64),
                    _ => u64::from(*rng.pick(INTERESTING_32)),
                };
                write_be(data, prefix_at, 4, value);
                true
            }
            // A frame repeated, or dropped.
            1 => {
                let end = (body_at + body_len).min(data.len());
                let frame = data[prefix_at..end].to_vec();
                if rng.one_in(2) {
                    data.splice(end..end, frame);
                } else {
                    data.drain(prefix_at..end);
                }
                true
            }
            _ => self.msgpack_in(data, body_at),
        }
    }

    // ------------------------------------------------------------ wasm

    fn wasm(&mut self, data: &mut Vec<u8>) -> bool {
        let sections = wasm_sections(data);
        if sections.is_empty() {
            return false;
        }
        let choice = self.rng.below(6);
        let section = *self.rng.pick(&sections);
        match choice {
            // The section's size, off by a little, huge, or overlong.
            0 | 1 => {
                let value = match self.rng.below(4) {
                    0 => section.size.wrapping_add(1 + self.rng.below(4) as u32),
                    1 => section.size.saturating_sub(1 + self.rng.below(4) as u32),
                    2 => *self.rng.pick(INTERESTING_32),
                    _ => section.size,
                };
                let overlong = self.rng.one_in(3);
                let mut leb = Vec::new();
                write_leb(&mut leb, value, overlong);
                data.splice(section.size_at..section.payload_at, leb);
                true
            }
            2 => {
                data[section.id_at] = *self.rng.pick(&[0u8, 1, 5, 7, 11, 12, 13, 0x7f, 0xff]);
                true
            }
            // The claims inside a custom section, mutated as a JWT.
            3 => {
                let payload = data[section.payload_at..section.end].to_vec();
                let Some((name_end, name)) = custom_name(&payload) else {
                    return false;
                };
                if name != b"wasmcloud_jwt" && name != b"jwt" {
                    return false;
                }
                let mut jwt = payload[name_end..].to_vec();
                self.jwt(&mut jwt);
                let mut new_payload = payload[..name_end].to_vec();
                new_payload.extend_from_slice(&jwt);
                let mut section_bytes = Vec::new();
                write_leb(&mut section_bytes, new_payload.len() as u32, false);
                section_bytes.extend_from_slice(&new_payload);
                data.splice(section.size_at..section.end, section_bytes);
                true
            }
            // Mutate the module's body, then sign it again so the hash
            // matches and the checks behind it run.
            4 => {
                if section.end > section.payload_at {
                    let i = section.payload_at + self.rng.below(section.end - section.payload_at);
                    data[i] ^= 1 << self.rng.below(8);
                }
                match self.signer.sign_wasm(data) {
                    Some(signed) => {
                        *data = signed;
                        true
                    }
                    None => false,
                }
            }
            // A section dropped or repeated.
            _ => {
                let bytes = data[section.id_at..section.end].to_vec();
                if self.rng.one_in(2) {
                    data.drain(section.id_at..section.end);
                } else {
                    data.splice(section.end..section.end, bytes);
                }
                true
            }
        }
    }

    // ------------------------------------------------------------ JWT

    fn jwt(&mut self, data: &mut Vec<u8>) -> bool {
        let Ok(text) = std::str::from_utf8(data) else {
            return false;
        };
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() != 3 {
            return false;
        }
        let (Some(header), Some(claims)) = (b64url_decode(parts[0]), b64url_decode(parts[1]))
        else {
            return false;
        };
        let mut segments = [header, claims];
        let which = if self.rng.one_in(4) { 0 } else { 1 };
        let mut json = Mutator {
            rng: &mut *self.rng,
            shape: Shape::Text,
            dict: JSON_DICT,
            max_len: 64 * 1024,
            signer: self.signer,
        };
        let seg = std::mem::take(&mut segments[which]);
        segments[which] = json.mutate(&seg, &[]);
        if !self.rng.one_in(3) {
            if let Some(signed) = self.signer.sign_jwt(&segments[0], &segments[1]) {
                *data = signed.into_bytes();
                return true;
            }
        }
        let sig = if self.rng.one_in(5) {
            String::new()
        } else {
            parts[2].to_owned()
        };
        *data = format!(
            "{}.{}.{sig}",
            b64url_encode(&segments[0]),
            b64url_encode(&segments[1])
        )
        .into_bytes();
        true
    }

    // ------------------------------------------------------------ tar

    fn tar(&mut self, data: &mut Vec<u8>) -> bool {
        let gzipped = data.starts_with(&[0x1f, 0x8b]);
        let mut tar = if gzipped {
            let mut out = Vec::new();
            let decoder = flate2::read::GzDecoder::new(&data[..]);
            if decoder.take(8 << 20).read_to_end(&mut out).is_err() && out.is_empty() {
                return false;
            }
            out
        } else {
            data.clone()
        };
        if !self.tar_blocks(&mut tar) {
            return false;
        }
        // Mostly keep the wrapping; sometimes swap it.
        let gzip_out = if self.rng.one_in(6) {
            !gzipped
        } else {
            gzipped
        };
        *data = if gzip_out { gzip(&tar) } else { tar };
        true
    }

    fn tar_blocks(&mut self, tar: &mut Vec<u8>) -> bool {
        let entries = tar_entries(tar);
        if entries.is_empty() {
            return false;
        }
        let entry = *self.rng.pick(&entries);
        let h = entry.header;
        let rng = &mut *self.rng;
        let fix_checksum = !rng.one_in(5);
        match rng.below(9) {
            0 | 1 => {
                let size = match rng.below(5) {
                    0 => entry.size.wrapping_add(1 + rng.below(600) as u64),
                    1 => entry.size.saturating_sub(1 + rng.below(600) as u64),
                    2 => u64::from(*rng.pick(INTERESTING_32)),
                    3 => *rng.pick(&[
                        0u64,
                        511,
                        512,
                        513,
                        1 << 29,
                        (1 << 29) + 1,
                        1 << 31,
                        1 << 33,
                        0o77777777777,
                    ]),
                    _ => *rng.pick(INTERESTING_64),
                };
                set_tar_size(&mut tar[h..h + 512], size, rng.one_in(4));
            }
            2 => {
                tar[h + 156] = *rng.pick(b"0\x0012345677LKxgSVMZ");
            }
            3 => {
                let name = *rng.pick(TAR_NAMES);
                let field = &mut tar[h..h + 100];
                field.fill(0);
                let n = name.len().min(100);
                field[..n].copy_from_slice(&name[..n]);
            }
            4 => {
                let i = h + rng.below(512);
                tar[i] = if rng.one_in(2) {
                    rng.byte()
                } else {
                    *rng.pick(INTERESTING_8)
                };
            }
            // An entry repeated, dropped or moved to the end.
            5 => {
                let end = entry.padded_end(tar.len());
                let bytes = tar[h..end].to_vec();
                match rng.below(3) {
                    0 => {
                        tar.splice(end..end, bytes);
                    }
                    1 => {
                        tar.drain(h..end);
                    }
                    _ => {
                        tar.drain(h..end);
                        let at = tar_end(tar);
                        tar.splice(at..at, bytes);
                    }
                }
                return true;
            }
            // A PAX or GNU long-name header placed before the entry.
            6 => {
                let (kind, body): (u8, Vec<u8>) = match rng.below(4) {
                    0 => (
                        b'x',
                        pax_record("size", &rng.pick(INTERESTING_64).to_string()),
                    ),
                    1 => (b'x', pax_record("path", "claims.jwt")),
                    2 => (b'L', b"x86_64-linux.bin\0".to_vec()),
                    _ => (b'x', b"99999999999999999999 size=1\n".to_vec()),
                };
                let ext = tar_entry(kind, "././@PaxHeader", &body);
                tar.splice(h..h, ext);
                return true;
            }
            // The data of an entry (a JWT gets JWT mutations).
            7 if entry.size > 0 => {
                let end = entry.data_end(tar.len());
                let mut body = tar[entry.data..end].to_vec();
                let mut inner = Mutator {
                    rng: &mut *self.rng,
                    shape: Shape::Jwt,
                    dict: &[],
                    max_len: 1 << 20,
                    signer: self.signer,
                };
                if !inner.jwt(&mut body) {
                    inner.havoc(&mut body, &[]);
                }
                let rebuilt = tar_entry(tar[h + 156], &header_name(&tar[h..h + 100]), &body);
                let old_end = entry.padded_end(tar.len());
                tar.splice(h..old_end, rebuilt);
                return true;
            }
            // Fresh claims for whatever binaries the archive now holds.
            _ => {
                let targets: Vec<(String, Vec<u8>)> = entries
                    .iter()
                    .filter_map(|e| {
                        let name = header_name(&tar[e.header..e.header + 100]);
                        let target = name.strip_suffix(".bin")?.to_owned();
                        let end = e.data_end(tar.len());
                        Some((target, tar.get(e.data..end)?.to_vec()))
                    })
                    .collect();
                let Some(jwt) = self.signer.sign_par_claims(&targets) else {
                    return false;
                };
                let Some(claims) = entries
                    .iter()
                    .find(|e| header_name(&tar[e.header..e.header + 100]) == "claims.jwt")
                else {
                    return false;
                };
                let old_end = claims.padded_end(tar.len());
                let rebuilt = tar_entry(b'0', "claims.jwt", jwt.as_bytes());
                tar.splice(claims.header..old_end, rebuilt);
                return true;
            }
        }
        if fix_checksum {
            set_tar_checksum(&mut tar[h..h + 512]);
        }
        true
    }

    // ------------------------------------------------------------ text

    fn text(&mut self, data: &mut Vec<u8>) -> bool {
        let lines: Vec<(usize, usize)> = line_spans(data);
        if lines.is_empty() {
            return false;
        }
        let rng = &mut *self.rng;
        let (start, end) = *rng.pick(&lines);
        match rng.below(6) {
            0 => {
                let copy = data[start..end].to_vec();
                data.splice(end..end, copy);
            }
            1 => {
                data.drain(start..end);
            }
            2 if !self.dict.is_empty() => {
                let mut token = rng.pick(self.dict).to_vec();
                token.push(b'\n');
                data.splice(start..start, token);
            }
            3 if !self.dict.is_empty() => {
                // A word (a run of letters, digits, dots or dashes) replaced.
                let words = word_spans(&data[start..end]);
                if words.is_empty() {
                    return false;
                }
                let (a, b) = *rng.pick(&words);
                let token = rng.pick(self.dict).to_vec();
                data.splice(start + a..start + b, token);
            }
            4 => {
                // A number replaced by an interesting one.
                let words = word_spans(&data[start..end]);
                let numbers: Vec<_> = words
                    .into_iter()
                    .filter(|(a, b)| data[start + a..start + b].iter().all(u8::is_ascii_digit))
                    .collect();
                if numbers.is_empty() {
                    return false;
                }
                let (a, b) = *rng.pick(&numbers);
                let value = match rng.below(3) {
                    0 => rng.pick(INTERESTING_64).to_string(),
                    1 => rng.pick(INTERESTING_32).to_string(),
                    _ => "-1".to_owned(),
                };
                data.splice(start + a..start + b, value.into_bytes());
            }
            _ => {
                let (a, b) = *rng.pick(&lines);
                if a < start {
                    let moved = data[start..end].to_vec();
                    data.drain(start..end);
                    data.splice(a..a, moved);
                } else if b > end {
                    let moved = data[a..b].to_vec();
                    data.drain(a..b);
                    data.splice(start..start, moved);
                }
            }
        }
        true
    }
}

const JSON_DICT: &[&[u8]] = &[
    b"\"exp\":",
    b"\"nbf\":",
    b"\"iat\":",
    b"\"iss\":",
    b"\"sub\":",
    b"\"wascap\":",
    b"\"wascap_revision\":",
    b"\"caps\":",
    b"\"hash\":",
    b"\"target_hashes\":",
    b"\"capid\":",
    b"\"prov\":",
    b"\"config_schema\":",
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-1",
    b"1e308",
    b"null",
    b"true",
    b"{}",
    b"[]",
    b"[",
    b"{\"a\":",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b",",
    b"\"",
];

const TAR_NAMES: &[&[u8]] = &[
    b"claims.jwt",
    b"x86_64-linux.bin",
    b"aarch64-linux.bin",
    b".bin",
    b"../x86_64-linux.bin",
    b"/claims.jwt",
    b"./claims.jwt",
    b"claims.jwt/",
    b"",
    b"\xff\xfe.bin",
    b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.bin",
];

/// Marker bytes of every MessagePack type.
const MARKERS: &[u8] = &[
    0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
    0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd8, 0xd9, 0xda,
    0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff,
];

/// One MessagePack value the scanner saw: where its marker is, where its
/// length (or integer) field is and how wide, its value, where it ends.
#[derive(Debug, Clone, Copy)]
struct Site {
    at: usize,
    field: usize,
    width: usize,
    value: u64,
    end: usize,
}

fn read_be(data: &[u8], at: usize, width: usize) -> Option<u64> {
    let bytes = data.get(at..at + width)?;
    Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

fn write_be(data: &mut [u8], at: usize, width: usize, value: u64) {
    for k in 0..width {
        if let Some(slot) = data.get_mut(at + k) {
            *slot = (value >> (8 * (width - 1 - k))) as u8;
        }
    }
}

/// Walks one MessagePack value at `pos`, recording every value in it;
/// returns where it ends.
fn scan_msgpack(data: &[u8], pos: usize, depth: usize, sites: &mut Vec<Site>) -> Option<usize> {
    if depth > 48 || sites.len() > 4096 {
        return None;
    }
    let m = *data.get(pos)?;
    // (bytes of length field, what follows: 0 raw bytes, 1 array items, 2 map pairs, 3 int, 4 fixed)
    let (width, kind, inline, fixed) = match m {
        0x00..=0x7f | 0xe0..=0xff => (0, 4, 0u64, 0usize),
        0x80..=0x8f => (0, 2, u64::from(m & 0x0f), 0),
        0x90..=0x9f => (0, 1, u64::from(m & 0x0f), 0),
        0xa0..=0xbf => (0, 0, u64::from(m & 0x1f), 0),
        0xc0 | 0xc2 | 0xc3 => (0, 4, 0, 0),
        0xc1 => return None,
        0xc4 | 0xd9 => (1, 0, 0, 0),
        0xc5 | 0xda => (2, 0, 0, 0),
        0xc6 | 0xdb => (4, 0, 0, 0),
        0xc7 => (1, 0, 0, 1),
        0xc8 => (2, 0, 0, 1),
        0xc9 => (4, 0, 0, 1),
        0xca => (4, 3, 0, 0),
        0xcb => (8, 3, 0, 0),
        0xcc | 0xd0 => (1, 3, 0, 0),
        0xcd | 0xd1 => (2, 3, 0, 0),
        0xce | 0xd2 => (4, 3, 0, 0),
        0xcf | 0xd3 => (8, 3, 0, 0),
        0xd4 => (0, 4, 0, 2),
        0xd5 => (0, 4, 0, 3),
        0xd6 => (0, 4, 0, 5),
        0xd7 => (0, 4, 0, 9),
        0xd8 => (0, 4, 0, 17),
        0xdc => (2, 1, 0, 0),
        0xdd => (4, 1, 0, 0),
        0xde => (2, 2, 0, 0),
        0xdf => (4, 2, 0, 0),
    };
    let field = pos + 1;
    let value = if width > 0 {
        read_be(data, field, width)?
    } else {
        inline
    };
    let index = sites.len();
    sites.push(Site {
        at: pos,
        field,
        width,
        value,
        end: pos + 1,
    });
    let mut cur = field + width;
    match kind {
        0 => {
            cur = cur
                .checked_add(usize::try_from(value).ok()?)?
                .checked_add(fixed)?
        }
        1 => {
            for _ in 0..value.min(100_000) {
                cur = scan_msgpack(data, cur, depth + 1, sites)?;
            }
        }
        2 => {
            for _ in 0..value.min(100_000) {
                cur = scan_msgpack(data, cur, depth + 1, sites)?;
                cur = scan_msgpack(data, cur, depth + 1, sites)?;
            }
        }
        3 => {}
        _ => cur = pos + 1 + fixed,
    }
    if cur > data.len() {
        return None;
    }
    sites[index].end = cur;
    Some(cur)
}

/// (prefix offset, body offset, body length) of each whole frame.
fn frame_bodies(data: &[u8]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(len) = read_be(data, pos, 4) {
        let len = len as usize;
        let body = pos + 4;
        if body + len > data.len() {
            break;
        }
        out.push((pos, body, len));
        pos = body + len;
    }
    out
}

/// Rewrites each frame's length prefix to the length of the MessagePack
/// value its body starts with (so a mutated body is still read as one
/// frame); stops at the first body the scanner cannot read.
fn fix_frame_prefixes(data: &mut [u8]) {
    let mut pos = 0;
    while pos + 4 <= data.len() {
        let body = pos + 4;
        let mut sites = Vec::new();
        let end = match scan_msgpack(data, body, 0, &mut sites) {
            Some(end) => end,
            None => {
                let rest = data.len() - body;
                write_be(data, pos, 4, rest as u64);
                return;
            }
        };
        write_be(data, pos, 4, (end - body) as u64);
        pos = end;
    }
}

#[derive(Debug, Clone, Copy)]
struct WasmSection {
    id_at: usize,
    size_at: usize,
    payload_at: usize,
    size: u32,
    end: usize,
}

fn read_leb(data: &[u8], pos: &mut usize) -> Option<u32> {
    let mut result: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *data.get(*pos)?;
        *pos += 1;
        result |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return u32::try_from(result).ok();
        }
    }
    None
}

fn write_leb(out: &mut Vec<u8>, mut value: u32, overlong: bool) {
    if overlong {
        for _ in 0..4 {
            out.push((value & 0x7f) as u8 | 0x80);
            value >>= 7;
        }
        out.push((value & 0x0f) as u8);
        return;
    }
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn wasm_sections(data: &[u8]) -> Vec<WasmSection> {
    let mut out = Vec::new();
    if data.len() < 8 {
        return out;
    }
    let mut pos = 8;
    while pos < data.len() {
        let id_at = pos;
        let mut p = pos + 1;
        let Some(size) = read_leb(data, &mut p) else {
            break;
        };
        let end = p + size as usize;
        if end > data.len() {
            break;
        }
        out.push(WasmSection {
            id_at,
            size_at: id_at + 1,
            payload_at: p,
            size,
            end,
        });
        pos = end;
    }
    out
}

/// A wasm custom section named `name` holding `data`: id, size, payload.
pub fn custom_section(name: &str, data: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(name.len() + data.len() + 5);
    write_leb(&mut payload, name.len() as u32, false);
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(data);
    let mut out = vec![0];
    write_leb(&mut out, payload.len() as u32, false);
    out.extend_from_slice(&payload);
    out
}

/// A custom section's name: (where its data starts, the name).
fn custom_name(payload: &[u8]) -> Option<(usize, &[u8])> {
    let mut pos = 0;
    let len = read_leb(payload, &mut pos)? as usize;
    let name = payload.get(pos..pos + len)?;
    Some((pos + len, name))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64url without padding, as JWTs use it.
pub fn b64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let v = B64.iter().position(|x| *x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[derive(Debug, Clone, Copy)]
struct TarEntry {
    header: usize,
    data: usize,
    size: u64,
}

impl TarEntry {
    /// Where the entry's data ends, within `len`.
    fn data_end(&self, len: usize) -> usize {
        usize::try_from(self.size)
            .map_or(len, |size| self.data.saturating_add(size))
            .min(len)
    }

    /// Where the entry's last block ends, within `len`.
    fn padded_end(&self, len: usize) -> usize {
        usize::try_from(self.size.saturating_add(511) / 512 * 512)
            .map_or(len, |size| self.data.saturating_add(size))
            .min(len)
    }
}

fn octal(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        return field[1..]
            .iter()
            .fold(0u64, |acc, b| acc.wrapping_shl(8) | u64::from(*b));
    }
    field
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(*b))
        .fold(0u64, |acc, b| {
            acc.wrapping_mul(8).wrapping_add(u64::from(b - b'0'))
        })
}

fn tar_entries(tar: &[u8]) -> Vec<TarEntry> {
    let mut out = Vec::new();
    let mut pos: usize = 0;
    while pos.saturating_add(512) <= tar.len() && out.len() < 256 {
        let header = &tar[pos..pos + 512];
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let size = octal(&header[124..136]);
        out.push(TarEntry {
            header: pos,
            data: pos + 512,
            size,
        });
        let Some(next) = size
            .checked_add(511)
            .map(|s| s / 512 * 512)
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| (pos + 512).checked_add(s))
        else {
            break;
        };
        pos = next;
    }
    out
}

/// Where the end-of-archive blocks start (or the end).
fn tar_end(tar: &[u8]) -> usize {
    tar_entries(tar)
        .last()
        .map_or(0, |e| e.padded_end(tar.len()))
}

fn header_name(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn set_tar_size(header: &mut [u8], size: u64, base256: bool) {
    let field = &mut header[124..136];
    if base256 || size > 0o77777777777 {
        field.fill(0);
        field[0] = 0x80;
        for k in 0..8 {
            field[4 + k] = (size >> (8 * (7 - k))) as u8;
        }
    } else {
        let text = format!("{size:011o}\0");
        field.copy_from_slice(text.as_bytes());
    }
}

fn set_tar_checksum(header: &mut [u8]) {
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
}

/// One tar entry (header, data, padding) of type `kind`.
pub fn tar_entry(kind: u8, name: &str, body: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    let _ = header.set_path(if name.is_empty() { "x" } else { name });
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    if name.is_empty() || name.len() > 100 {
        let n = name.len().min(100);
        out[..100].fill(0);
        out[..n].copy_from_slice(&name.as_bytes()[..n]);
        set_tar_checksum(&mut out);
    }
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn pax_record(key: &str, value: &str) -> Vec<u8> {
    // "LEN key=value\n", LEN counting itself.
    let rest = format!(" {key}={value}\n");
    let mut len = rest.len() + 1;
    while format!("{len}{rest}").len() != len {
        len += 1;
    }
    format!("{len}{rest}").into_bytes()
}

/// Gzips `bytes` (fast compression: mutants are many).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

fn line_spans(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < data.len() {
        out.push((start, data.len()));
    }
    out
}

fn word_spans(line: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, b) in line.iter().enumerate() {
        let word = b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
        match (word, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, line.len()));
    }
    out
}
