//! The policy (plain HTTP, `latest`, the layer cap) and the registry's
//! refusals (no such tag, the wrong kind of artifact).

use oci::{ArtifactKind, OciError, Policy};

use super::*;

#[tokio::test]
async fn plain_http_is_refused_unless_the_registry_is_listed() {
    let registry = Registry::start();
    let reference = format!("{}/plain:1", registry.addr);
    let strict = client_in(&registry.new_cache_dir(), Policy::default(), HashMap::new());

    let err = strict
        .push(
            &reference,
            ArtifactKind::Actor,
            artifact(ArtifactKind::Actor, "p"),
        )
        .await
        .unwrap_err();
    match &err {
        OciError::InsecureRefused { registry: host, .. } => assert_eq!(host, &registry.addr),
        other => panic!("push over HTTPS to a plain registry gave {other:?}"),
    }
    assert_one_line(&err, &registry.addr);
    assert!(err.to_string().contains("allowed-insecure"), "{err}");

    // Listed, it works; then the strict client still refuses to fetch.
    let listed = client_for(&registry);
    listed
        .push(
            &reference,
            ArtifactKind::Actor,
            artifact(ArtifactKind::Actor, "p"),
        )
        .await
        .unwrap();
    let err = strict
        .fetch(&reference, ArtifactKind::Actor)
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::InsecureRefused { .. }), "{err:?}");
    assert!(listed.fetch(&reference, ArtifactKind::Actor).await.is_ok());
}

#[tokio::test]
async fn latest_and_no_tag_are_refused_unless_allowed() {
    let registry = Registry::start();
    let bytes = artifact(ArtifactKind::Actor, "latest");
    let client = client_for(&registry);
    let explicit = format!("{}/newest:latest", registry.addr);
    let implied = format!("{}/newest", registry.addr);

    for (reference, was_implied) in [(&explicit, false), (&implied, true)] {
        let err = client
            .fetch(reference, ArtifactKind::Actor)
            .await
            .unwrap_err();
        match &err {
            OciError::LatestRefused { implied, .. } => assert_eq!(*implied, was_implied),
            other => panic!("{reference}: {other:?}"),
        }
        assert_one_line(&err, "newest");
        let err = client
            .push(reference, ArtifactKind::Actor, bytes.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, OciError::LatestRefused { .. }), "{err:?}");
    }

    let allowing = client_in(
        &registry.new_cache_dir(),
        Policy {
            allow_latest: true,
            ..insecure_ok(&registry)
        },
        HashMap::new(),
    );
    allowing
        .push(&explicit, ArtifactKind::Actor, bytes.clone())
        .await
        .unwrap();
    for reference in [&explicit, &implied] {
        let fetched = allowing
            .fetch(reference, ArtifactKind::Actor)
            .await
            .unwrap();
        assert_eq!(fetched.bytes, bytes, "{reference}");
    }
    // A digest pins content: no tag needed, allowed or not.
    let manifest = allowing
        .fetch(&implied, ArtifactKind::Actor)
        .await
        .unwrap()
        .manifest_digest;
    let pinned = format!("{}/newest@{manifest}", registry.addr);
    assert_eq!(
        client
            .fetch(&pinned, ArtifactKind::Actor)
            .await
            .unwrap()
            .bytes,
        bytes
    );
}

#[tokio::test]
async fn a_missing_tag_repository_or_digest_is_not_found() {
    let registry = Registry::start();
    let client = client_for(&registry);
    let bytes = artifact(ArtifactKind::Actor, "there");
    client
        .push(
            &format!("{}/present:v1", registry.addr),
            ArtifactKind::Actor,
            bytes,
        )
        .await
        .unwrap();
    let absent_digest = sha256(b"never pushed");
    for reference in [
        format!("{}/present:v2", registry.addr),
        format!("{}/absent:v1", registry.addr),
        format!("{}/present@{absent_digest}", registry.addr),
    ] {
        let err = client
            .fetch(&reference, ArtifactKind::Actor)
            .await
            .unwrap_err();
        assert!(
            matches!(err, OciError::NotFound { .. }),
            "{reference}: {err:?}"
        );
        assert_one_line(&err, &reference);
    }
}

#[tokio::test]
async fn an_artifact_of_the_other_kind_is_the_wrong_media_type() {
    let mut registry = Registry::start();
    let client = client_for(&registry);
    let actor = format!("{}/kinds/actor:1", registry.addr);
    let provider = format!("{}/kinds/provider:1", registry.addr);
    let actor_manifest = client
        .push(
            &actor,
            ArtifactKind::Actor,
            artifact(ArtifactKind::Actor, "a"),
        )
        .await
        .unwrap();
    client
        .push(
            &provider,
            ArtifactKind::Provider,
            artifact(ArtifactKind::Provider, "p"),
        )
        .await
        .unwrap();

    for (reference, asked, found) in [
        (&actor, ArtifactKind::Provider, ArtifactKind::Actor),
        (&provider, ArtifactKind::Actor, ArtifactKind::Provider),
    ] {
        let err = client.fetch(reference, asked).await.unwrap_err();
        match &err {
            OciError::WrongMediaType {
                kind,
                found: media_type,
                ..
            } => {
                assert_eq!(*kind, asked);
                assert_eq!(media_type, found.layer_media_type());
            }
            other => panic!("{reference} as {asked:?}: {other:?}"),
        }
        assert_one_line(&err, reference);
    }
    // The same from the cache: fetch the actor by digest, then ask for a provider.
    let pinned = format!("{}/kinds/actor@{actor_manifest}", registry.addr);
    client.fetch(&pinned, ArtifactKind::Actor).await.unwrap();
    registry.stop();
    let err = client
        .fetch(&pinned, ArtifactKind::Provider)
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::WrongMediaType { .. }), "{err:?}");
}

#[tokio::test]
async fn a_layer_over_the_cap_is_refused_and_not_kept() {
    let registry = Registry::start();
    let reference = format!("{}/big:1", registry.addr);
    let bytes = vec![7u8; 64 * 1024];
    client_for(&registry)
        .push(&reference, ArtifactKind::Actor, bytes.clone())
        .await
        .unwrap();
    let cache = registry.new_cache_dir();
    let capped = capped_client(&registry, &cache, 16 * 1024);
    let err = capped
        .fetch(&reference, ArtifactKind::Actor)
        .await
        .unwrap_err();
    match &err {
        OciError::TooLarge { limit, .. } => assert_eq!(*limit, 16 * 1024),
        other => panic!("{other:?}"),
    }
    assert_one_line(&err, &reference);
    assert!(!is_cached(&cache, &bytes));
}

/// A manifest that understates its layer's size: the download is cut off
/// while it reads, at the cap, not after.
#[tokio::test]
async fn a_layer_larger_than_declared_is_cut_off_while_reading() {
    use oci_client::secrets::RegistryAuth;

    let registry = Registry::start();
    let reference = format!("{}/liar:1", registry.addr);
    let bytes = vec![9u8; 256 * 1024];
    let raw = raw_client();
    let oci_ref: oci_client::Reference = reference.parse().unwrap();
    raw.store_auth_if_needed(oci_ref.resolve_registry(), &RegistryAuth::Anonymous)
        .await;
    raw.push_blob(&oci_ref, bytes.clone(), &sha256(&bytes))
        .await
        .unwrap();
    raw.push_blob(&oci_ref, b"{}".to_vec(), &sha256(b"{}"))
        .await
        .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": oci::ACTOR_CONFIG_MEDIA_TYPE, "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": oci::ACTOR_LAYER_MEDIA_TYPE, "digest": sha256(&bytes), "size": 1024}],
    });
    raw.push_manifest_raw(
        &oci_ref,
        serde_json::to_vec(&manifest).unwrap(),
        "application/vnd.oci.image.manifest.v1+json"
            .parse()
            .unwrap(),
    )
    .await
    .unwrap();

    let cache = registry.new_cache_dir();
    let capped = capped_client(&registry, &cache, 64 * 1024);
    let err = capped
        .fetch(&reference, ArtifactKind::Actor)
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::TooLarge { .. }), "{err:?}");
    assert!(!is_cached(&cache, &bytes));
    // Under a larger cap it is still refused: more bytes than declared.
    let err = client_for(&registry)
        .fetch(&reference, ArtifactKind::Actor)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OciError::DigestMismatch {
                in_cache: false,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_registry_that_is_not_there_is_unreachable() {
    // A reserved loopback port nothing listens on.
    let addr = format!("127.0.0.1:{}", test_support::free_port());
    let reference = format!("{addr}/echo:1");
    for policy in [
        Policy::default(),
        Policy {
            allowed_insecure: vec![addr.clone()],
            ..Policy::default()
        },
    ] {
        let cache = temp_dir("cache");
        let client = client_in(&cache, policy, HashMap::new());
        let err = client
            .fetch(&reference, ArtifactKind::Actor)
            .await
            .unwrap_err();
        match &err {
            OciError::Unreachable { registry, .. } => assert_eq!(registry, &addr),
            other => panic!("{other:?}"),
        }
        assert_one_line(&err, &addr);
        let err = client
            .push(
                &reference,
                ArtifactKind::Actor,
                artifact(ArtifactKind::Actor, "x"),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, OciError::Unreachable { .. }), "{err:?}");
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
