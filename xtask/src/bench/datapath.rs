//! Runs the per-packet benchmark (`lb-agent/benches/datapath.rs`, built by cargo) and reads
//! the JSON lines it prints.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use super::Config;

/// One case at one N.
#[derive(Clone, Debug)]
pub struct Case {
    pub n: u32,
    /// `floor`, `v4_new`, `v4_established`, `v6_new`, `v6_established`.
    pub case: String,
    pub median_ns: f64,
    pub p90_ns: f64,
    pub p99_ns: f64,
}

/// Everything the per-packet benchmark printed.
#[derive(Clone, Debug, Default)]
pub struct Results {
    pub cases: Vec<Case>,
    /// Amortised floor with a large `repeat`, per N (ns).
    pub floor_repeat_ns: Vec<(u32, f64)>,
    /// Translations counted when one frame ran with `repeat = repeat_check.0`.
    pub repeat_check: Option<(u64, u64)>,
    pub services: Vec<u32>,
}

impl Results {
    pub fn get(&self, n: u32, case: &str) -> Option<&Case> {
        self.cases.iter().find(|c| c.n == n && c.case == case)
    }
}

pub fn run(binary: &Path, cfg: &Config) -> anyhow::Result<Results> {
    let services: Vec<String> = cfg.datapath_services.iter().map(u32::to_string).collect();
    let mut cmd = Command::new(binary);
    // What `cargo bench` passes: measure, rather than run as a test.
    cmd.arg("--bench")
        .args(["--services", &services.join(",")])
        .args(["--runs", &cfg.datapath_runs.to_string()])
        .args(["--rounds", &cfg.datapath_rounds.to_string()])
        .stderr(std::process::Stdio::inherit());
    eprintln!("+ {cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !out.status.success() {
        bail!("{} failed with {}", binary.display(), out.status);
    }
    let mut results = Results {
        services: cfg.datapath_services.clone(),
        ..Results::default()
    };
    for line in String::from_utf8(out.stdout)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("the datapath benchmark printed {line:?}"))?;
        let num = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(f64::NAN)
        };
        let n = v.get("n").and_then(serde_json::Value::as_u64).unwrap_or(0) as u32;
        match v.get("case").and_then(serde_json::Value::as_str) {
            Some("repeat_check") => {
                results.repeat_check = Some((num("repeat") as u64, num("translated") as u64));
            }
            Some("floor_repeat") => results.floor_repeat_ns.push((n, num("mean_ns"))),
            Some("counters") => {}
            Some(case) => results.cases.push(Case {
                n,
                case: case.to_owned(),
                median_ns: num("median_ns"),
                p90_ns: num("p90_ns"),
                p99_ns: num("p99_ns"),
            }),
            None => bail!("the datapath benchmark printed a line without a case: {line}"),
        }
    }
    for &n in &cfg.datapath_services {
        for case in [
            "floor",
            "v4_new",
            "v4_established",
            "v6_new",
            "v6_established",
        ] {
            if results.get(n, case).is_none() {
                bail!("the datapath benchmark printed no {case} result for {n} services");
            }
        }
    }
    Ok(results)
}
