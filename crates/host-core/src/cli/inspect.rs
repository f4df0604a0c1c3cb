//! `claims` and `par`: signing actors, packing provider archives, and
//! printing what is in them.

use anyhow::{anyhow, Context, Result};

use host_core::{
    claims::{self, SignOptions},
    keys::KeyKind,
    par,
};

use super::args::{ClaimsCommand, ParCommand};

pub(crate) fn claims_command(command: ClaimsCommand) -> Result<()> {
    match command {
        ClaimsCommand::Sign(args) => {
            let wasm = std::fs::read(&args.input)
                .with_context(|| format!("cannot read {}", args.input.display()))?;
            let (issuer, subject) = args.keys.pair(&args.name, KeyKind::Module)?;
            let options = SignOptions {
                name: args.name,
                caps: args.caps,
                tags: args.tags,
                call_alias: args.call_alias,
                rev: args.rev,
                ver: args.ver,
                expires_in_secs: args
                    .expires_in_secs
                    .or(args.expires_in_days.map(|d| d.saturating_mul(86_400))),
                not_before_secs: args.not_before_days.map(|d| d.saturating_mul(86_400)),
            };
            let signed = claims::sign(&wasm, &options, &issuer, &subject)?;
            std::fs::write(&args.output, signed)
                .with_context(|| format!("cannot write {}", args.output.display()))?;
            println!("{}", subject.public_key());
            Ok(())
        }
        ClaimsCommand::Inspect { file, json } => {
            let wasm =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let (claims, report) = claims::inspect(&wasm)?;
            let meta = claims.metadata.clone().unwrap_or_default();
            if json {
                let value = serde_json::json!({
                    "key": claims.subject,
                    "issuer": claims.issuer,
                    "name": meta.name,
                    "kind": if claims::is_component(&wasm) { "component" } else { "module" },
                    "caps": meta.caps.unwrap_or_default(),
                    "tags": meta.tags.unwrap_or_default(),
                    "rev": meta.rev,
                    "ver": meta.ver,
                    "call_alias": meta.call_alias,
                    "hash": meta.module_hash,
                    "issued_at": claims.issued_at,
                    "expires": claims.expires,
                    "not_before": claims.not_before,
                    "validation": report,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("Actor        {}", claims.subject);
                println!("Name         {}", meta.name.as_deref().unwrap_or("-"));
                println!("Issuer       {}", claims.issuer);
                println!(
                    "Kind         {}",
                    if claims::is_component(&wasm) {
                        "component"
                    } else {
                        "module"
                    }
                );
                println!(
                    "Capabilities {}",
                    meta.caps
                        .map(|c| c.join(", "))
                        .unwrap_or_else(|| "none".into())
                );
                println!(
                    "Revision     {}",
                    meta.rev
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "-".into())
                );
                println!("Version      {}", meta.ver.as_deref().unwrap_or("-"));
                println!("Call alias   {}", meta.call_alias.as_deref().unwrap_or("-"));
                println!("Expires      {}", report.expires);
                println!("Valid from   {}", report.valid_from);
                println!(
                    "Signature    {}",
                    if report.signature_valid {
                        "valid"
                    } else {
                        "INVALID"
                    }
                );
                println!(
                    "Hash         {}",
                    if report.hash_valid {
                        "matches the wasm"
                    } else {
                        "DOES NOT MATCH the wasm"
                    }
                );
            }
            // The report is printed either way; invalid claims also fail
            // the command, as `wash claims inspect` does.
            match claims_problem(&report) {
                Some(problem) => Err(anyhow!("{}: {problem}", file.display())),
                None => Ok(()),
            }
        }
    }
}

/// Why claims that were read are not valid, if they are not: the first of
/// a bad signature, a hash that does not match, expiry, not yet valid.
fn claims_problem(report: &claims::ClaimsReport) -> Option<String> {
    if !report.signature_valid {
        Some("the claims signature is invalid: the claims were changed or not signed by their issuer".into())
    } else if !report.hash_valid {
        Some("the wasm was changed after it was signed: its hash does not match the claims".into())
    } else if report.expired {
        Some(format!("the claims expired {}", report.expires))
    } else if report.not_yet_valid {
        Some(format!(
            "the claims are not valid yet: they become valid {}",
            report.valid_from
        ))
    } else {
        None
    }
}

pub(crate) fn par_command(command: ParCommand) -> Result<()> {
    match command {
        ParCommand::Create(args) => {
            let (issuer, subject) = args.keys.pair(&args.name, KeyKind::Service)?;
            let mut targets = Vec::new();
            for spec in &args.targets {
                let (target, path) = spec
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--target `{spec}` is not TARGET=BINARY"))?;
                let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
                targets.push((target.to_owned(), bytes));
            }
            par::create(
                &par::CreateOptions {
                    name: args.name,
                    vendor: args.vendor,
                    capid: args.capid,
                    rev: args.rev,
                    ver: args.ver,
                    targets,
                },
                &issuer,
                &subject,
                &args.output,
            )?;
            println!("{}", subject.public_key());
            Ok(())
        }
        ParCommand::Inspect { file, json } => {
            let bytes =
                par::read_file(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // Every target is listed from its header; no binary is kept.
            let archive = par::read_target(&bytes, None)?;
            let verdict = par::verify_claims(&archive);
            let meta = archive.metadata();
            let targets: Vec<&String> = archive.targets.keys().collect();
            if json {
                let value = serde_json::json!({
                    "key": archive.key(),
                    "issuer": archive.claims.issuer,
                    "name": meta.name,
                    "vendor": meta.vendor,
                    "capid": meta.capid,
                    "rev": meta.rev,
                    "ver": meta.ver,
                    "targets": targets,
                    "target_hashes": meta.target_hashes,
                    "valid": verdict.is_ok(),
                    "problem": verdict.as_ref().err().map(|e| e.to_string()),
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("Provider     {}", archive.key());
                println!("Name         {}", meta.name.as_deref().unwrap_or("-"));
                println!("Vendor       {}", meta.vendor);
                println!("Contract     {}", meta.capid);
                println!("Issuer       {}", archive.claims.issuer);
                println!(
                    "Revision     {}",
                    meta.rev
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "-".into())
                );
                println!("Version      {}", meta.ver.as_deref().unwrap_or("-"));
                println!(
                    "Targets      {}",
                    targets
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                match &verdict {
                    Ok(()) => println!("Claims       valid"),
                    Err(e) => println!("Claims       INVALID: {e}"),
                }
            }
            // The report is printed either way; invalid claims also fail
            // the command.
            verdict.map_err(|e| anyhow!("{}: {e}", file.display()))
        }
    }
}
