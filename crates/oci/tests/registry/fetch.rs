//! Push and fetch, by tag and by digest, with wasmCloud's media types.

use oci::ArtifactKind;

use super::*;

#[tokio::test]
async fn push_then_fetch_by_tag_and_by_digest_for_both_kinds() {
    let registry = Registry::start();
    let client = client_for(&registry);
    for (kind, repo) in [
        (ArtifactKind::Actor, "echo"),
        (ArtifactKind::Provider, "kv"),
    ] {
        let bytes = artifact(kind, repo);
        let tagged = format!("{}/wasmcloud/{repo}:0.1.0", registry.addr);
        let manifest_digest = client.push(&tagged, kind, bytes.clone()).await.unwrap();
        assert!(manifest_digest.starts_with("sha256:"), "{manifest_digest}");

        let fetched = client.fetch(&tagged, kind).await.unwrap();
        assert_eq!(fetched.bytes, bytes);
        assert_eq!(fetched.digest, sha256(&bytes));
        assert_eq!(fetched.manifest_digest, manifest_digest);
        assert_eq!(fetched.media_type, kind.layer_media_type());
        assert!(!fetched.from_cache, "the first fetch downloads");
        assert_eq!(fetched.warning, None);
        assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);

        // By digest, with `oci://`, into a fresh cache: from the registry.
        let pinned = format!("oci://{}/wasmcloud/{repo}@{manifest_digest}", registry.addr);
        let fresh = client_for(&registry);
        let by_digest = fresh.fetch(&pinned, kind).await.unwrap();
        assert_eq!(by_digest.bytes, bytes);
        assert_eq!(by_digest.manifest_digest, manifest_digest);
        assert!(!by_digest.from_cache);
        // And again: from the cache.
        let again = fresh.fetch(&pinned, kind).await.unwrap();
        assert_eq!(again.bytes, bytes);
        assert!(again.from_cache);
        assert_eq!(again.warning, None);
    }
}

#[tokio::test]
async fn pushed_media_types_are_wasmclouds() {
    use oci_client::manifest::OciManifest;
    use oci_client::secrets::RegistryAuth;

    let registry = Registry::start();
    let client = client_for(&registry);
    // The strings as wasmCloud v0.82.0 writes them (wash-lib's registry.rs
    // and the host's oci.rs), spelled out here rather than taken from the crate.
    let expected = [
        (
            ArtifactKind::Actor,
            "application/vnd.module.wasm.content.layer.v1+wasm",
            "application/vnd.wasmcloud.actor.archive.config",
        ),
        (
            ArtifactKind::Provider,
            "application/vnd.wasmcloud.provider.archive.layer.v1+par",
            "application/vnd.wasmcloud.provider.archive.config",
        ),
    ];
    let raw = raw_client();
    for (kind, layer_type, config_type) in expected {
        let reference = format!("{}/media/{kind:?}:1.0.0", registry.addr).to_lowercase();
        let bytes = artifact(kind, "media");
        let pushed = client.push(&reference, kind, bytes.clone()).await.unwrap();

        let (body, digest) = raw
            .pull_manifest_raw(
                &reference.parse().unwrap(),
                &RegistryAuth::Anonymous,
                &["application/vnd.oci.image.manifest.v1+json"],
            )
            .await
            .unwrap();
        assert_eq!(digest, pushed);
        assert_eq!(sha256(&body), pushed);
        let OciManifest::Image(manifest) = serde_json::from_slice(&body).unwrap() else {
            panic!("not an image manifest: {}", String::from_utf8_lossy(&body));
        };
        assert_eq!(
            manifest.media_type.as_deref(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        assert_eq!(manifest.config.media_type, config_type);
        assert_eq!(manifest.config.digest, sha256(b"{}"), "wash's empty config");
        assert_eq!(manifest.layers.len(), 1);
        assert_eq!(manifest.layers[0].media_type, layer_type);
        assert_eq!(manifest.layers[0].digest, sha256(&bytes));
        assert_eq!(manifest.layers[0].size, bytes.len() as i64);
    }
}

#[tokio::test]
async fn a_tag_that_moved_is_fetched_again() {
    let registry = Registry::start();
    let client = client_for(&registry);
    let reference = format!("{}/moving:v1", registry.addr);
    let first = artifact(ArtifactKind::Actor, "first");
    let second = artifact(ArtifactKind::Actor, "second");

    let first_manifest = client
        .push(&reference, ArtifactKind::Actor, first.clone())
        .await
        .unwrap();
    let fetched = client.fetch(&reference, ArtifactKind::Actor).await.unwrap();
    assert_eq!(
        (fetched.bytes.clone(), fetched.from_cache),
        (first.clone(), false)
    );
    let unchanged = client.fetch(&reference, ArtifactKind::Actor).await.unwrap();
    assert_eq!(
        (unchanged.bytes, unchanged.from_cache),
        (first.clone(), true)
    );

    let second_manifest = client
        .push(&reference, ArtifactKind::Actor, second.clone())
        .await
        .unwrap();
    assert_ne!(first_manifest, second_manifest);
    let moved = client.fetch(&reference, ArtifactKind::Actor).await.unwrap();
    assert_eq!(moved.bytes, second);
    assert_eq!(moved.manifest_digest, second_manifest);
    assert_eq!(moved.digest, sha256(&second));
    assert!(!moved.from_cache, "the new layer is downloaded");

    // The old content is still reachable by its digest, from the cache.
    let old = format!("{}/moving@{first_manifest}", registry.addr);
    let pinned = client.fetch(&old, ArtifactKind::Actor).await.unwrap();
    assert_eq!((pinned.bytes, pinned.from_cache), (first, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_of_one_artifact_share_the_cache() {
    let registry = Registry::start();
    let client = std::sync::Arc::new(client_for(&registry));
    let reference = format!("{}/together:1", registry.addr);
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    client
        .push(&reference, ArtifactKind::Provider, bytes.clone())
        .await
        .unwrap();

    let fetches: Vec<_> = (0..4)
        .map(|_| {
            let (client, reference) = (client.clone(), reference.clone());
            tokio::spawn(async move { client.fetch(&reference, ArtifactKind::Provider).await })
        })
        .collect();
    for fetch in fetches {
        let fetched = fetch.await.unwrap().unwrap();
        assert_eq!(fetched.bytes.len(), bytes.len());
        assert!(fetched.bytes == bytes);
    }
    let cached = client
        .fetch(&reference, ArtifactKind::Provider)
        .await
        .unwrap();
    assert!(cached.from_cache);
    assert!(cached.bytes == bytes);
    // No temporary file is left beside the blobs.
    let blobs = cached.path.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
