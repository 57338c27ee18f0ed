//! `diskforge plan`: the ordered steps of a build with their exact external command
//! lines and a chained input hash per step, without running anything. Secrets are never
//! resolved here: the plan shows `***` where a build would use them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use serde_json::{json, Value};

use crate::cli::{GlobalOpts, PlanArgs};
use crate::exec::REDACTED;
use crate::guest::script::{self, Secrets};
use crate::recipe::{DiskFormat, SecretValue, Size, TtydSource};

/// One planned step.
pub struct Step {
    pub name: &'static str,
    pub description: String,
    pub commands: Vec<String>,
    pub hash: String,
}

fn hash(prev: &str, inputs: &Value) -> String {
    let bytes = crate::oci::image::canonical_json(&json!({"prev": prev, "inputs": inputs}))
        .unwrap_or_default();
    format!("sha256:{}", crate::cache::sha256_hex(&bytes))
}

/// The steps of building `loaded`.
pub fn steps(loaded: &crate::recipe::LoadedRecipe) -> Result<Vec<Step>> {
    let r = &loaded.recipe;
    let mut out = Vec::new();
    let base = r.base.clone().unwrap_or_default();
    let base_inputs = serde_json::to_value(&base)?;
    let (base_desc, base_cmds) = if let Some(c) = &base.catalog {
        match crate::base::catalog::find_entry(c, &loaded.dir, None) {
            Ok((entry, _)) if entry.build.is_some() => {
                let b = entry.build.clone().expect("checked");
                let cmd = crate::base::build::mmdebstrap_cmd(&b, Path::new("$WORK/rootfs.tar"));
                (
                    format!("build base {c} from Debian packages (cached by definition)"),
                    vec![cmd.display(), "guestfish --listen --rw --format=qcow2 -a $WORK/base.qcow2  # MBR, ext4, extlinux, networkd".into()],
                )
            }
            Ok((entry, _)) => {
                let arch = base.arch.unwrap_or_default();
                let img = entry
                    .images
                    .get(&arch)
                    .map(|i| i.url.clone())
                    .unwrap_or_default();
                (
                    format!(
                        "download base {c} ({}) and verify its checksum",
                        arch.as_str()
                    ),
                    vec![format!("GET {img}")],
                )
            }
            Err(e) => (format!("catalog entry {c}: {e:#}"), vec![]),
        }
    } else if let Some(u) = &base.url {
        (
            format!("download {u} and verify its checksum"),
            vec![format!("GET {u}")],
        )
    } else {
        (
            format!("use local base {}", base.path.clone().unwrap_or_default()),
            vec![],
        )
    };
    let h = hash("", &base_inputs);
    out.push(Step {
        name: "base",
        description: base_desc,
        commands: base_cmds,
        hash: h.clone(),
    });

    let fmt = base.format.unwrap_or(DiskFormat::Qcow2);
    let base_path = PathBuf::from("$CACHE/blobs/sha256/$BASE");
    let overlay = PathBuf::from("$WORK/overlay.qcow2");
    let size = r.disk.size;
    let target = match size {
        Some(Size::Absolute(b)) => b.to_string(),
        Some(Size::Relative(b)) => format!("$((BASE_SIZE + {b}))"),
        None => "$BASE_SIZE".into(),
    };
    let cmds = crate::guest::overlay_cmds(&base_path, fmt, &overlay, 0);
    let resize = cmds[1].display().replace(" 0", &format!(" {target}"));
    let h = hash(&h, &json!({"disk": serde_json::to_value(&r.disk)?}));
    out.push(Step {
        name: "overlay",
        description: format!(
            "overlay on the cached base (never modified), resized to {}",
            size.map(|s| s.to_string())
                .unwrap_or_else(|| "the base size".into())
        ),
        commands: vec![cmds[0].display(), resize],
        hash: h.clone(),
    });

    // Placeholders stand in for secrets: the plan never reads them.
    let placeholder = SecretValue::new(REDACTED.into());
    let secrets = Secrets {
        users: r
            .customize
            .users
            .iter()
            .filter(|u| u.password.is_some())
            .map(|u| (u.name.clone(), placeholder.clone()))
            .collect(),
        root: r
            .customize
            .root_password
            .as_ref()
            .map(|_| placeholder.clone()),
        ttyd: r
            .ttyd
            .credential
            .as_ref()
            .map(|c| SecretValue::new(format!("{}:{REDACTED}", c.user))),
    };
    let ttyd_bin = match &r.ttyd.source {
        TtydSource::Package(_) => None,
        TtydSource::Url(_) | TtydSource::Path(_) => Some(PathBuf::from("/dev/null")),
    };
    let c = script::generate(r, &secrets, &loaded.dir, ttyd_bin.as_deref())?;
    let mut guest_cmds = vec![format!(
        "guestfish --listen{} --rw --format=qcow2 -a {}",
        if c.packages.is_empty() {
            ""
        } else {
            " --network"
        },
        overlay.display()
    )];
    if r.disk.grow.enabled && size.is_some() {
        guest_cmds.push(format!(
            "grow {} to the end of the disk (GPT: part-expand-gpt + recreate; MBR: part-resize), then resize2fs / xfs-growfs / btrfs-filesystem-resize (LVM: pvresize + lvresize-free)",
            r.disk.grow.partition.clone().unwrap_or_else(|| "the partition holding /".into())
        ));
    }
    guest_cmds.push(format!("tar-in $WORK/stage.tar {}", script::STAGE));
    guest_cmds.push(format!("sh /bin/sh {}/customize.sh", script::STAGE));
    for s in &c.steps {
        guest_cmds.push(format!("  # {s}"));
    }
    if r.hygiene.sparsify {
        guest_cmds.push("zero-free-space (every filesystem)".into());
    }
    let h = hash(
        &h,
        &json!({"customize": serde_json::to_value(&r.customize)?, "ttyd": serde_json::to_value(&r.ttyd)?, "hygiene": serde_json::to_value(&r.hygiene)?, "script": c.script}),
    );
    out.push(Step {
        name: "guest",
        description: "one appliance launch: grow, customize, ttyd, hygiene".into(),
        commands: guest_cmds,
        hash: h.clone(),
    });

    let disk = PathBuf::from(format!(
        "$WORK/disk.{}",
        if r.output.format == DiskFormat::Raw {
            "img"
        } else {
            "qcow2"
        }
    ));
    let mut fin = vec![crate::qemu_img::convert_cmd(
        &overlay,
        &disk,
        r.output.format,
        r.output.qcow2_compress,
    )
    .display()];
    if r.output.format == DiskFormat::Qcow2 {
        fin.push(crate::qemu_img::check_cmd(&disk).display());
    }
    let h = hash(
        &h,
        &json!({"format": r.output.format.as_str(), "compress": r.output.qcow2_compress}),
    );
    out.push(Step {
        name: "finalize",
        description: "flatten into a standalone disk and check it".into(),
        commands: fin,
        hash: h.clone(),
    });

    let h = hash(&h, &serde_json::to_value(&r.output)?);
    out.push(Step {
        name: "pack",
        description: format!(
            "pack /disk/{} (107:107, 0440) into an OCI layer ({}), config and manifest; write {}",
            r.output.disk_name,
            crate::oci::compression_name(r.output.compression),
            match &r.output.repository {
                Some(repo) => format!("docker://{repo}:{}", r.output.tags.join(",")),
                None => format!(
                    "oci:out/{}:{}",
                    r.name.clone().unwrap_or_else(|| "NAME".into()),
                    r.output.tags.join(",")
                ),
            }
        ),
        commands: vec![],
        hash: h,
    });
    Ok(out)
}

pub fn cmd_plan(_global: &GlobalOpts, args: PlanArgs) -> Result<ExitCode> {
    let loaded = crate::build::load(&args.recipe, &args.inputs)?;
    let steps = steps(&loaded)?;
    if args.json {
        let v: Vec<Value> = steps
            .iter()
            .map(|s| json!({"step": s.name, "description": s.description, "commands": s.commands, "input_hash": s.hash}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"recipe": args.recipe, "recipe_digest": loaded.digest, "steps": v})
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "plan for {} (recipe {})",
        args.recipe.display(),
        loaded.digest
    );
    for (i, s) in steps.iter().enumerate() {
        println!(
            "\n{}. {}: {}\n   input {}",
            i + 1,
            s.name,
            s.description,
            s.hash
        );
        for c in &s.commands {
            println!("   $ {c}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
