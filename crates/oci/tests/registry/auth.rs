//! Credentials per registry, against a registry behind HTTP basic auth.

use oci::{ArtifactKind, Credentials, OciError};

use super::*;

fn basic(username: &str, password: &str) -> Credentials {
    Credentials::Basic {
        username: username.into(),
        password: password.into(),
    }
}

#[tokio::test]
async fn basic_credentials_are_accepted_and_wrong_ones_denied() {
    let registry = Registry::start_with_user("alice", "wonderland");
    let reference = format!("{}/private/echo:1.0", registry.addr);
    let bytes = artifact(ArtifactKind::Actor, "private");

    let right = HashMap::from([(registry.addr.clone(), basic("alice", "wonderland"))]);
    let client = client_in(&registry.new_cache_dir(), insecure_ok(&registry), right);
    let manifest = client
        .push(&reference, ArtifactKind::Actor, bytes.clone())
        .await
        .unwrap();
    let fetched = client.fetch(&reference, ArtifactKind::Actor).await.unwrap();
    assert_eq!(
        (fetched.bytes, fetched.manifest_digest),
        (bytes.clone(), manifest)
    );

    let wrong = HashMap::from([(registry.addr.clone(), basic("alice", "looking-glass"))]);
    let other_registry = HashMap::from([("ghcr.io".to_string(), basic("alice", "wonderland"))]);
    for credentials in [wrong, other_registry, HashMap::new()] {
        let denied = client_in(
            &registry.new_cache_dir(),
            insecure_ok(&registry),
            credentials,
        );
        let err = denied
            .fetch(&reference, ArtifactKind::Actor)
            .await
            .unwrap_err();
        assert!(matches!(err, OciError::Denied { .. }), "{err:?}");
        assert_one_line(&err, &registry.addr);
        let err = denied
            .push(&reference, ArtifactKind::Actor, bytes.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, OciError::Denied { .. }), "push: {err:?}");
    }
}

#[tokio::test]
async fn credentials_set_at_run_time_are_used_by_the_next_fetch() {
    let registry = Registry::start_with_user("bob", "builder");
    let reference = format!("{}/later:1", registry.addr);
    let bytes = artifact(ArtifactKind::Provider, "later");
    let client = client_for(&registry);

    let err = client
        .fetch(&reference, ArtifactKind::Provider)
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::Denied { .. }), "{err:?}");

    client.set_credentials(&registry.addr, basic("bob", "builder"));
    client
        .push(&reference, ArtifactKind::Provider, bytes.clone())
        .await
        .unwrap();
    assert_eq!(
        client
            .fetch(&reference, ArtifactKind::Provider)
            .await
            .unwrap()
            .bytes,
        bytes
    );

    // A denied tag is not served from the cache: only an unreachable one is.
    client.set_credentials(&registry.addr, basic("bob", "wrong"));
    let err = client
        .fetch(&reference, ArtifactKind::Provider)
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::Denied { .. }), "{err:?}");
    client.remove_credentials(&registry.addr);
    let err = client
        .fetch(&reference, ArtifactKind::Provider)
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::Denied { .. }), "{err:?}");
}
