//! The examples' binaries through their real command line: `check` prints
//! the merged config with secrets redacted, `openapi` the document, and a bad
//! config fails start-up with exit code 1 naming the field. (Building this
//! test also builds the `translate` binary the Modal deployment tests run.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

fn translate(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/modalkit.yaml");
    let output = Command::new(env!("CARGO_BIN_EXE_translate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_prints_the_merged_config_with_env_overrides() {
    let (code, stdout, stderr) = translate(
        &["check"],
        &[("MODALKIT_APP_SETTINGS__BATCH_CONFIG__WAIT_MS", "17")],
    );
    assert_eq!(code, 0, "{stderr}");
    let merged: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(merged["app_settings"]["batch_config"]["wait_ms"], 17);
    assert!(
        merged["model_settings"]["model_entries"]
            .get("translator")
            .is_some(),
        "{merged}"
    );
}

#[test]
fn openapi_states_the_input_rules() {
    let (code, stdout, stderr) = translate(&["openapi"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    let language = &doc["components"]["schemas"]["TranslationInput"]["properties"]["language"];
    assert_eq!(language["minLength"], 2, "{language}");
    assert_eq!(language["maxLength"], 8, "{language}");
    assert!(language["pattern"].is_string(), "{language}");
}

#[test]
fn a_bad_value_fails_start_up_naming_the_field() {
    let (code, _, stderr) = translate(
        &["check"],
        &[("MODALKIT_APP_SETTINGS__BATCH_CONFIG__MAX_BATCH_SIZE", "0")],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("max_batch_size"), "{stderr}");
}

#[test]
fn check_warns_on_what_modalkit_ignores_and_strict_fails_on_it() {
    let env = [("MODALKIT_APP_SETTINGS__BATCH_CONFIG__MAX_BATCHSIZE", "8")];
    let (code, stdout, stderr) = translate(&["check"], &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("app_settings.batch_config.max_batchsize: unknown key, ignored; did you mean max_batch_size?"),
        "{stderr}"
    );
    assert!(serde_json::from_str::<Value>(&stdout).is_ok());
    let (code, _, stderr) = translate(&["check", "--strict"], &env);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--strict"), "{stderr}");
    let (code, _, stderr) = translate(&["check", "--strict"], &[]);
    assert_eq!(code, 0, "the project's own config is clean: {stderr}");
}

#[test]
fn the_openapi_title_carries_the_app_postfix() {
    let (_, stdout, _) = translate(&["openapi"], &[("MODALKIT_APP_POSTFIX", "-prod")]);
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        doc["info"]["title"].as_str().unwrap().ends_with("-prod"),
        "{}",
        doc["info"]
    );
    let (_, stdout, _) = translate(&["openapi"], &[]);
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        doc["info"]["title"].as_str().unwrap().ends_with("-dev"),
        "{}",
        doc["info"]
    );
}
