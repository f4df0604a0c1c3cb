//! Provider archives: `par::read`, `verify_claims` and `verify_and_extract`
//! (into a scratch cache) on fuzzed gzip and plain tar.

use host_core::par;

use super::{err, ok, Outcome};
use crate::harness::scratch;

pub(super) const DICT: &[&[u8]] = &[
    b"claims.jwt",
    b"x86_64-linux.bin",
    b"aarch64-linux.bin",
    b"ustar\x0000",
    b"ustar  \x00",
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
    b"00000000000\x00",
    b"77777777777\x00",
    b"\x80\x00\x00\x00\x00\x00\x00\x00\x7f\xff\xff\xff",
];

pub(super) fn par(input: &[u8]) -> Outcome {
    let read = match par::read(input) {
        Ok(archive) => match par::verify_claims(&archive) {
            Ok(()) => ok(&format!("read valid targets={}", archive.targets.len())),
            Err(e) => err(e),
        },
        Err(e) => err(e),
    };
    let cache = scratch().join("provider-cache");
    let extracted = match par::verify_and_extract(input, &cache, &[]) {
        Ok(provider) => {
            // What was extracted is what the claims promised.
            let bytes = std::fs::read(&provider.binary)
                .unwrap_or_else(|e| panic!("the extracted binary cannot be read: {e}"));
            let hash = hex::encode_upper(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            let claimed = provider.metadata.target_hashes.get(&par::host_target());
            assert_eq!(
                Some(&hash),
                claimed,
                "the extracted binary is not the one the claims name"
            );
            ok("extracted")
        }
        Err(e) => err(e),
    };
    format!("{read}|{extracted}")
}
