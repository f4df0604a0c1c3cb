//! The cache: corrupt copies, a corrupt registry, and a registry that is gone.

use oci::{ArtifactKind, OciError};

use super::*;

#[tokio::test]
async fn a_corrupt_cached_blob_is_detected_and_fetched_again() {
    let mut registry = Registry::start();
    let client = client_for(&registry);
    let reference = format!("{}/fragile:1", registry.addr);
    let bytes = artifact(ArtifactKind::Actor, "fragile");
    let manifest = client
        .push(&reference, ArtifactKind::Actor, bytes.clone())
        .await
        .unwrap();
    let pinned = format!("{}/fragile@{manifest}", registry.addr);
    let fetched = client.fetch(&reference, ArtifactKind::Actor).await.unwrap();

    // By tag: the bad copy is replaced, and the caller is told.
    let mut corrupt = bytes.clone();
    corrupt[100] ^= 0xff;
    std::fs::write(&fetched.path, &corrupt).unwrap();
    let refetched = client.fetch(&reference, ArtifactKind::Actor).await.unwrap();
    assert_eq!(refetched.bytes, bytes);
    assert!(!refetched.from_cache);
    let warning = refetched.warning.expect("a warning about the corrupt copy");
    assert!(warning.contains(&sha256(&corrupt)), "{warning}");
    assert_eq!(
        std::fs::read(&fetched.path).unwrap(),
        bytes,
        "the cache is repaired"
    );

    // By digest, likewise.
    std::fs::write(&fetched.path, &corrupt).unwrap();
    let by_digest = client.fetch(&pinned, ArtifactKind::Actor).await.unwrap();
    assert_eq!(by_digest.bytes, bytes);
    assert!(by_digest.warning.is_some());

    // With the registry gone, a corrupt copy is refused, never served.
    registry.stop();
    for reference in [&pinned, &reference] {
        std::fs::write(&fetched.path, &corrupt).unwrap();
        let err = client
            .fetch(reference, ArtifactKind::Actor)
            .await
            .unwrap_err();
        match &err {
            OciError::DigestMismatch {
                expected,
                actual,
                in_cache,
                ..
            } => {
                assert_eq!(expected, &sha256(&bytes));
                assert_eq!(actual, &sha256(&corrupt));
                assert!(*in_cache);
            }
            other => panic!("{reference}: {other:?}"),
        }
        assert_one_line(&err, reference);
        assert!(!fetched.path.exists(), "the corrupt copy was removed");
    }
}

#[tokio::test]
async fn content_the_registry_corrupted_is_refused_and_not_cached() {
    let registry = Registry::start();
    let reference = format!("{}/rotten:1", registry.addr);
    let bytes = artifact(ArtifactKind::Provider, "rotten");
    client_for(&registry)
        .push(&reference, ArtifactKind::Provider, bytes.clone())
        .await
        .unwrap();
    // Flip one byte of the registry's own copy, keeping its length.
    let data = registry.blob_data(&sha256(&bytes));
    let mut stored = std::fs::read(&data).unwrap();
    assert_eq!(stored, bytes, "the registry stores the layer as pushed");
    stored[7] ^= 0x01;
    std::fs::write(&data, &stored).unwrap();

    let cache = registry.new_cache_dir();
    let client = client_in(&cache, insecure_ok(&registry), HashMap::new());
    let err = client
        .fetch(&reference, ArtifactKind::Provider)
        .await
        .unwrap_err();
    match &err {
        OciError::DigestMismatch {
            expected, in_cache, ..
        } => {
            assert_eq!(expected, &sha256(&bytes));
            assert!(!*in_cache);
        }
        other => panic!("{other:?}"),
    }
    assert_one_line(&err, &reference);
    assert!(!is_cached(&cache, &bytes));
}

#[tokio::test]
async fn with_the_registry_gone_the_cache_serves_what_it_has() {
    let mut registry = Registry::start();
    let cache = registry.new_cache_dir();
    let client = client_in(&cache, insecure_ok(&registry), HashMap::new());
    let tagged = format!("{}/offline:1", registry.addr);
    let uncached = format!("{}/offline:2", registry.addr);
    let bytes = artifact(ArtifactKind::Actor, "offline");
    let manifest = client
        .push(&tagged, ArtifactKind::Actor, bytes.clone())
        .await
        .unwrap();
    client
        .push(
            &uncached,
            ArtifactKind::Actor,
            artifact(ArtifactKind::Actor, "other"),
        )
        .await
        .unwrap();
    let pinned = format!("{}/offline@{manifest}", registry.addr);
    client.fetch(&tagged, ArtifactKind::Actor).await.unwrap();
    registry.stop();

    // A restarted host: a new client on the same cache, no registry.
    let restarted = client_in(&cache, insecure_ok(&registry), HashMap::new());
    let by_tag = restarted.fetch(&tagged, ArtifactKind::Actor).await.unwrap();
    assert_eq!(by_tag.bytes, bytes);
    assert_eq!(by_tag.manifest_digest, manifest);
    assert!(by_tag.from_cache);
    let warning = by_tag.warning.expect("a warning for a tag served offline");
    assert!(!warning.contains('\n'), "{warning}");
    assert!(
        warning.contains(&registry.addr) && warning.contains("cache"),
        "{warning}"
    );

    let by_digest = restarted.fetch(&pinned, ArtifactKind::Actor).await.unwrap();
    assert_eq!(by_digest.bytes, bytes);
    assert!(by_digest.from_cache);
    assert_eq!(by_digest.warning, None, "a cached digest needs no registry");

    let absent_digest = format!("{}/offline@{}", registry.addr, sha256(b"never"));
    for reference in [&uncached, &absent_digest] {
        let err = restarted
            .fetch(reference, ArtifactKind::Actor)
            .await
            .unwrap_err();
        assert!(
            matches!(err, OciError::Unreachable { .. }),
            "{reference}: {err:?}"
        );
        assert_one_line(&err, reference);
    }

    // Back up: the tag is resolved against the registry again, no warning.
    registry.start_again();
    let online = restarted.fetch(&tagged, ArtifactKind::Actor).await.unwrap();
    assert_eq!(online.warning, None);
    assert!(online.from_cache, "the layer is still cached");
}
