//! A worker under its seccomp filter can start no program, yet spec images
//! need apt and uv: it builds them through `zeroboot build-helper`, started
//! before the filter. Here a thread under the worker's filter (which cannot
//! start a process itself) gets its spec builds answered by the helper,
//! typed errors included, and a helper that dies is reported, not waited on.

use std::path::Path;

use zeroboot::confine::{Filter, install};
use zeroboot::image::ImageError;
use zeroboot::image::spec_image::{self, SpecBuildOptions};
use zeroboot::spec::Spec;

#[test]
fn a_filtered_thread_builds_through_the_helper() {
    zeroboot::image::helper::start(Path::new(env!("CARGO_BIN_EXE_zeroboot"))).unwrap();
    let dir = tempfile_dir();
    let spec = Spec::from_json(
        &serde_json::json!({"files": [{"from": "missing-data", "to": "/data"}]}),
        &dir,
    )
    .unwrap();
    let opts = SpecBuildOptions {
        cache_dir: Some(dir.join("cache")),
        ..Default::default()
    };
    let (spawned, built) = std::thread::spawn(move || {
        install(Filter::Worker).unwrap();
        let spawned = std::process::Command::new("true").status();
        let built = spec_image::build(&spec, &opts, &mut |_| {});
        (spawned.is_ok(), built)
    })
    .join()
    .unwrap();
    assert!(!spawned, "the filter lets no process start");
    match built {
        Err(ImageError::Helper { message, data }) => {
            assert_eq!(data["kind"], "host_file_missing", "{message}");
            assert!(data["path"].as_str().unwrap().ends_with("missing-data"));
        }
        other => panic!("expected the helper's typed error, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("zeroboot-build-helper-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
