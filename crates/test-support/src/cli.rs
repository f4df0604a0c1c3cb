//! Arguments of the `host-core` commands that prepare what a host runs:
//! signing an actor and packing a provider archive. The tests and the
//! bench run them with their own key directories.

use std::path::Path;

use crate::path_text;

/// `claims sign INPUT -o OUT --name NAME EXTRA...` (EXTRA: `--cap`,
/// `--rev`, `--call-alias` and the like).
pub fn sign_args(input: &Path, out: &Path, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "claims".to_owned(),
        "sign".into(),
        path_text(input),
        "-o".into(),
        path_text(out),
        "--name".into(),
        name.into(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

/// `--cap CAP` for each of `caps`, for [`sign_args`].
pub fn caps<'a>(caps: &[&'a str]) -> Vec<&'a str> {
    caps.iter().flat_map(|cap| ["--cap", cap]).collect()
}

/// `par create --name NAME --vendor VENDOR --capid CAPID --target
/// ARCH-OS=BINARY -o OUT`: an archive of `binary` for this machine.
pub fn par_args(name: &str, vendor: &str, capid: &str, binary: &Path, out: &Path) -> Vec<String> {
    let target = format!(
        "{}-{}={}",
        std::env::consts::ARCH,
        std::env::consts::OS,
        binary.display()
    );
    [
        "par", "create", "--name", name, "--vendor", vendor, "--capid", capid, "--target",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .chain([target, "-o".into(), path_text(out)])
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_read_as_the_commands_do() {
        let (a, b) = (Path::new("/in.wasm"), Path::new("/out.wasm"));
        assert_eq!(
            sign_args(a, b, "echo", &caps(&["x:y", "z:w"])).join(" "),
            "claims sign /in.wasm -o /out.wasm --name echo --cap x:y --cap z:w"
        );
        let par = par_args("kv", "me", "wasmcloud:keyvalue", Path::new("/bin/kv"), b).join(" ");
        assert!(
            par.starts_with(
                "par create --name kv --vendor me --capid wasmcloud:keyvalue --target "
            ),
            "{par}"
        );
        assert!(par.ends_with("=/bin/kv -o /out.wasm"), "{par}");
    }
}
