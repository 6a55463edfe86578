//! Golden vectors shared with the Python tests: tests/golden/golden.json (made by
//! tests/golden/make_golden.py from the float64 NumPy/SciPy reference and SciPy's metrics).

use aesr1_core::{
    evaluate, format_ok, parse_score, rapo, Groups, NanPolicy, RewardConfig, Ties, Weights,
};
use serde_json::Value;

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/golden/golden.json"
    );
    let text = std::fs::read_to_string(path).expect("golden.json is readable");
    serde_json::from_str(&text).expect("golden.json is valid JSON")
}

/// A JSON number, or NaN for null.
fn num(v: &Value) -> f64 {
    if v.is_null() {
        f64::NAN
    } else {
        v.as_f64().expect("a number")
    }
}

/// A JSON array of numbers, flattened (rows of a matrix are concatenated).
fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        other => vec![num(other)],
    }
}

fn assert_close(name: &str, what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{name}/{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-12,
            "{name}/{what}[{i}]: got {g:e}, want {w:e}"
        );
    }
}

#[test]
fn reward_cases() {
    let golden = golden();
    let cases = golden["rewards"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let rows = case["pred"].as_array().unwrap();
        let (n, k) = (rows.len(), rows[0].as_array().unwrap().len());
        let pred = flat(&case["pred"]);
        let gt = flat(&case["gt"]);
        let w = &case["weights"];
        let config = RewardConfig {
            weights: Weights {
                rank: num(&w["rank"]),
                abs: num(&w["abs"]),
                binary: num(&w["binary"]),
                format: num(&w["format"]),
            },
            sigma: num(&case["sigma"]),
            eps: num(&case["eps"]),
            gamma: num(&case["gamma"]),
            threshold: num(&case["threshold"]),
            ties: if case["ties"] == "half" {
                Ties::Half
            } else {
                Ties::Strict
            },
        };
        let out = rapo(&pred, &gt, &Groups::uniform(n, k).unwrap(), &config, None).unwrap();
        let expected = &case["expected"];
        assert_close(name, "rank", &out.rank, &flat(&expected["rank"]));
        assert_close(name, "abs", &out.abs, &flat(&expected["abs"]));
        assert_close(name, "binary", &out.binary, &flat(&expected["binary"]));
        assert_close(name, "total", &out.total, &flat(&expected["total"]));
        assert_close(
            name,
            "advantages",
            &out.advantages,
            &flat(&expected["advantages"]),
        );
    }
}

#[test]
fn scattered_groups_case() {
    let golden = golden();
    let case = &golden["scattered"];
    let pred = flat(&case["pred_flat"]);
    let labels: Vec<usize> = case["group_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let groups = Groups::from_labels(&labels).unwrap();
    let per_completion = flat(&case["gt_per_completion"]);
    let gt: Vec<f64> = (0..groups.num_groups())
        .map(|g| per_completion[groups.members(g)[0]])
        .collect();
    let out = rapo(&pred, &gt, &groups, &RewardConfig::default(), None).unwrap();
    let expected = &case["expected"];
    for (what, got) in [
        ("rank", &out.rank),
        ("abs", &out.abs),
        ("total", &out.total),
        ("advantages", &out.advantages),
    ] {
        assert_close("scattered", what, got, &flat(&expected[what]));
    }
}

#[test]
fn parse_cases() {
    let golden = golden();
    for case in golden["parse"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = num(&case["score"]);
        let got = parse_score(text);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{text:?}: {got} vs {want}"
        );
        assert_eq!(format_ok(text), num(&case["format"]) == 1.0, "{text:?}");
    }
}

#[test]
fn metric_cases() {
    let golden = golden();
    for case in golden["metrics"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let c = evaluate(&flat(&case["pred"]), &flat(&case["gt"]), NanPolicy::Raise).unwrap();
        assert_eq!(
            c.krcc.to_bits(),
            num(&case["krcc"]).to_bits(),
            "{name}: krcc {} vs SciPy {}",
            c.krcc,
            num(&case["krcc"])
        );
        for (what, got) in [("srcc", c.srcc), ("plcc", c.plcc)] {
            let want = num(&case[what]);
            assert!(
                (got - want).abs() <= 1e-12 * want.abs(),
                "{name}: {what} {got} vs SciPy {want}"
            );
        }
    }
}
