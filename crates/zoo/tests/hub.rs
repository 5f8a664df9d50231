//! Weights through the hub path, against a fake cache directory laid out as hf-hub lays it out
//! (`models--org--name/refs/main` holding a revision, `snapshots/<rev>/model.safetensors`), with
//! no network.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use medxfer_zoo::{Architecture, BlockKind, HubOptions, HubRetry, ModelEntry, Preprocessing, ResNetConfig, WEIGHTS_FILE, hub_file};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fake_cache(root: &Path, repo: &str, revision: &str, file: &Path) {
    let folder = root.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("refs/main"), revision).unwrap();
    let snapshot = folder.join("snapshots").join(revision);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::copy(file, snapshot.join(WEIGHTS_FILE)).unwrap();
}

/// The small ResNet of the fixtures as a registry entry of hub repo `repo`.
fn tiny_resnet_entry(repo: &str) -> ModelEntry {
    ModelEntry {
        name: "resnet_basic_min".into(),
        paper_name: "test".into(),
        hub: repo.into(),
        feature_dim: 32,
        head: "fc".into(),
        num_classes: 10,
        architecture: Architecture::ResNet(ResNetConfig {
            channels: [64, 8, 16, 32],
            ..ResNetConfig::plain(BlockKind::Basic, [1, 1, 1, 1])
        }),
        preprocessing: Preprocessing { mean: [0.5; 3], std: [0.5; 3], resize: 256, crop: 224, interpolation: "bilinear".into() },
    }
}

#[test]
fn a_cached_hub_model_loads_offline() {
    let cache = std::env::temp_dir().join(format!("medxfer-hub-{}", std::process::id()));
    let repo = "timm/resnet_basic_min.test_in1k";
    fake_cache(&cache, repo, "0123abcd", &fixtures().join("resnet_basic_min.safetensors"));
    let options = HubOptions { cache_dir: Some(cache.clone()), offline: true, progress: false, ..HubOptions::default() };
    let path = hub_file(repo, WEIGHTS_FILE, &options).unwrap();
    assert!(path.ends_with("snapshots/0123abcd/model.safetensors"), "{}", path.display());

    let model = medxfer_zoo::pretrained(&tiny_resnet_entry(repo), &options, &Device::Cpu).unwrap();
    let reference = candle_core::safetensors::load(fixtures().join("resnet_basic_min_ref.safetensors"), &Device::Cpu).unwrap();
    let (_, logits) = model.features_and_logits(&reference["input"], false).unwrap();
    let difference = common::max_abs_difference(logits, &reference["logits"]);
    assert!(difference < 1e-4, "{difference}");

    let error = hub_file("timm/not_cached.x", WEIGHTS_FILE, &options).unwrap_err().to_string();
    assert!(error.contains("timm/not_cached.x/model.safetensors") && error.contains(&cache.display().to_string()), "{error}");
    std::fs::remove_dir_all(&cache).ok();
}

/// timm's config.json of timm/resnet50.a1_in1k, as the hub serves it.
const RESNET50_CONFIG: &str = r#"{"architecture": "resnet50", "num_classes": 1000, "num_features": 2048, "pretrained_cfg": {"tag": "a1_in1k", "custom_load": false, "input_size": [3, 224, 224], "test_input_size": [3, 288, 288], "fixed_input_size": false, "interpolation": "bicubic", "crop_pct": 0.95, "test_crop_pct": 1.0, "crop_mode": "center", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 1000, "pool_size": [7, 7], "first_conv": "conv1", "classifier": "fc"}}"#;

#[test]
fn a_hub_id_outside_the_registry_is_built_from_its_timm_config() {
    let registry = medxfer_zoo::Registry::load_default().unwrap();
    let entry = medxfer_zoo::entry_from_timm_config("someone/resnet50.custom", RESNET50_CONFIG).unwrap();
    assert_eq!(entry.architecture, registry.get("resnet50").unwrap().architecture);
    // Another checkpoint of the registry's architecture: named by its hub id, never `resnet50`.
    assert_eq!((entry.name.as_str(), entry.paper_name.as_str()), ("someone/resnet50.custom", "resnet50"));
    assert_eq!((entry.feature_dim, entry.head.as_str(), entry.num_classes), (2048, "fc", 1000));
    assert_eq!((entry.preprocessing.resize, entry.preprocessing.crop, entry.preprocessing.interpolation.as_str()), (235, 224, "bicubic"));

    let error = medxfer_zoo::entry_from_timm_config("x/y", r#"{"architecture": "coatnet_0_rw_224"}"#).unwrap_err().to_string();
    assert!(error.contains("coatnet_0_rw_224") && error.contains("densenet121") && error.contains("ConvNeXt"), "{error}");
    // The README's example: timm/convnext_tiny.fb_in1k's config.json names its preset only.
    let convnext = medxfer_zoo::entry_from_timm_config(
        "timm/convnext_tiny.fb_in1k",
        r#"{"architecture": "convnext_tiny", "num_classes": 1000, "num_features": 768}"#,
    )
    .unwrap();
    assert_eq!((convnext.feature_dim, convnext.head.as_str()), (768, "head.fc"));

    // The whole path from a hub id: config.json with timm's model_args, then the weights.
    let cache = std::env::temp_dir().join(format!("medxfer-hub-config-{}", std::process::id()));
    let repo = "someone/vit_min.test";
    fake_cache(&cache, repo, "feed", &fixtures().join("vit_min.safetensors"));
    let config = r#"{"architecture": "vit_small_patch16_224", "model_args": {"img_size": 64, "embed_dim": 24, "num_heads": 3, "depth": 2}, "num_classes": 10, "num_features": 24, "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "input_size": [3, 64, 64], "crop_pct": 0.9}}"#;
    std::fs::write(cache.join("models--someone--vit_min.test/snapshots/feed/config.json"), config).unwrap();
    let options = HubOptions { cache_dir: Some(cache.clone()), offline: true, progress: false, ..HubOptions::default() };
    let entry = registry.resolve(repo, &options).unwrap();
    let model = medxfer_zoo::pretrained(&entry, &options, &Device::Cpu).unwrap();
    let reference = candle_core::safetensors::load(fixtures().join("vit_min_ref.safetensors"), &Device::Cpu).unwrap();
    let (_, logits) = model.features_and_logits(&reference["input"], false).unwrap();
    let difference = common::max_abs_difference(logits, &reference["logits"]);
    assert!(difference < 1e-4, "{difference}");
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn hostile_sizes_in_a_config_json_are_refused_naming_the_file() {
    let vit = |args: &str, cfg: &str| {
        format!(r#"{{"architecture": "vit_small_patch16_224", "model_args": {{{args}}}, "num_classes": 10, "pretrained_cfg": {{{cfg}}}}}"#)
    };
    for (config, expected) in [
        (vit(r#""patch_size": 0"#, ""), "patch_size is 0"),
        (vit(r#""patch_size": 15"#, ""), "img_size 224 is not a multiple of patch_size 15"),
        (vit(r#""img_size": 0"#, ""), "img_size is 0"),
        (vit(r#""img_size": 100"#, ""), "img_size 100 is not a multiple of patch_size 16"),
        (vit(r#""num_heads": 0"#, ""), "num_heads is 0"),
        (vit(r#""num_heads": 5"#, ""), "embed_dim 384 is not a multiple of num_heads 5"),
        (vit(r#""embed_dim": 18446744073709551615"#, ""), "embed_dim is"),
        (vit(r#""depth": 100000"#, ""), "depth is 100000"),
        (vit("", r#""input_size": [3, 0, 0]"#), "input_size's side is 0"),
        (vit("", r#""input_size": [3, 224, 99999999999]"#), "input_size's side is 99999999999"),
        (vit("", r#""crop_pct": 0"#), "crop_pct is 0"),
        (vit("", r#""crop_pct": -1.5"#), "crop_pct is -1.5"),
        (vit("", r#""crop_pct": 7.5"#), "crop_pct is 7.5"),
        (vit("", r#""std": [0.5, 0, 0.5]"#), "std above 0"),
        (vit("", r#""interpolation": "lanczos""#), r#"interpolation "lanczos": expected one of ["bilinear", "bicubic"]"#),
        (r#"{"architecture": "resnet50", "num_classes": 0}"#.to_string(), "num_classes is 0"),
        (r#"{"architecture": "resnet50", "num_classes": 18446744073709551615}"#.to_string(), "num_classes is"),
        (r#"{"architecture": "resnet50", "model_args": {"layers": [3, 0, 6, 3]}}"#.to_string(), "block count (layers) is 0"),
        (
            r#"{"architecture": "resnet50", "model_args": {"channels": [64, 128, 256, 4000000000]}}"#.to_string(),
            "width (channels) is 4000000000",
        ),
        (r#"{"architecture": "densenet121", "model_args": {"growth_rate": 0}}"#.to_string(), "growth_rate is 0"),
        (r#"{"architecture": "densenet121", "model_args": {"block_config": []}}"#.to_string(), "dense blocks (block_config) is 0"),
    ] {
        let error = medxfer_zoo::entry_from_timm_config("someone/hostile", &config).unwrap_err().to_string();
        assert!(error.contains("someone/hostile/config.json") && error.contains(expected), "{config}: {error}");
    }
}

/// An HTTP request's path and its `Range: bytes=` value, read up to the blank line.
fn read_request(stream: &std::net::TcpStream) -> (String, Option<String>) {
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (mut request, mut range) = (String::new(), None);
    reader.read_line(&mut request).unwrap_or(0);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range = Some(value.trim().to_string());
        }
    }
    (request.split_whitespace().nth(1).unwrap_or("").to_string(), range)
}

/// The bytes `start..end` of a `size`-byte file a Range value asks for (hf-hub asks `0-0` for
/// metadata, `N-` to download or resume).
fn requested_bytes(range: Option<&str>, size: usize) -> (usize, usize) {
    match range {
        Some("0-0") => (0, 1),
        Some(open) => (open.trim_end_matches('-').parse::<usize>().unwrap(), size),
        None => (0, size),
    }
}

/// A stand-in for the hub's file server on 127.0.0.1: hf-hub's metadata request (`Range:
/// bytes=0-0`, answered with the etag, commit and size) and its ranged download. The first
/// `failures` requests get a 503; each download's body is sent in ten parts `pause` apart.
/// Returns the endpoint and the number of requests served so far.
fn serve(body: Vec<u8>, failures: usize, pause: std::time::Duration) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (body, counter) = (body.clone(), counter.clone());
            std::thread::spawn(move || {
                let (_, range) = read_request(&stream);
                if counter.fetch_add(1, Ordering::SeqCst) < failures {
                    let _ = stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    return;
                }
                let size = body.len();
                let (start, end) = requested_bytes(range.as_deref(), size);
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\netag: \"blob0123\"\r\nx-repo-commit: c0ffee\r\ncontent-range: bytes {start}-{}/{size}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    end - 1,
                    end - start
                );
                let _ = stream.write_all(head.as_bytes());
                let part = (end - start).div_ceil(10).max(1);
                for chunk in body[start..end].chunks(part) {
                    if end - start > 1 {
                        std::thread::sleep(pause);
                    }
                    if stream.write_all(chunk).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (endpoint, served)
}

fn online(cache: &Path, endpoint: String, retry: HubRetry) -> HubOptions {
    HubOptions { cache_dir: Some(cache.to_path_buf()), offline: false, progress: false, endpoint: Some(endpoint), retry }
}

/// `attempts` tries 50 ms apart at first, a minute's wait for another process's download.
fn quick_retry(attempts: u32) -> HubRetry {
    HubRetry { attempts, first_delay: std::time::Duration::from_millis(50), wait_for_others: std::time::Duration::from_secs(60) }
}

#[test]
fn a_flaky_network_is_retried_and_a_missing_file_is_not() {
    let cache = tempfile::tempdir().unwrap();
    let body = std::fs::read(fixtures().join("resnet_basic_min.safetensors")).unwrap();
    let (endpoint, served) = serve(body.clone(), 3, std::time::Duration::ZERO);
    let retry = quick_retry(5);
    let path = hub_file("timm/flaky.test", WEIGHTS_FILE, &online(cache.path(), endpoint.clone(), retry)).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert!(path.ends_with("snapshots/c0ffee/model.safetensors"), "{}", path.display());
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 5, "three 503s, then the metadata and the file");
    // Fewer tries than failures: an error that says how often it tried.
    let (endpoint, _) = serve(body, 10, std::time::Duration::ZERO);
    let error = hub_file("timm/down.test", WEIGHTS_FILE, &online(cache.path(), endpoint, HubRetry { attempts: 2, ..retry })).unwrap_err();
    assert!(error.to_string().contains("failed 2 time(s)") && error.to_string().contains("timm/down.test"), "{error}");
}

/// A damaged weights file in the hub cache stays there (the hub is asked only for files the
/// cache lacks), so "download it again" did nothing: the error says what to delete and what to
/// run, and doing that gives the whole file back.
#[test]
fn a_damaged_cached_file_is_named_with_how_to_fetch_it_again() {
    let cache = tempfile::tempdir().unwrap();
    let body = std::fs::read(fixtures().join("resnet_basic_min.safetensors")).unwrap();
    let (endpoint, _) = serve(body.clone(), 0, std::time::Duration::ZERO);
    let options = online(cache.path(), endpoint, quick_retry(2));
    let repo = "timm/damaged.test";
    let path = hub_file(repo, WEIGHTS_FILE, &options).unwrap();
    let blob = std::fs::canonicalize(&path).unwrap();
    assert_ne!(blob, path, "hf-hub links the snapshot's file to its blob");
    std::fs::write(&blob, &body[..body.len() / 2]).unwrap();
    let error = medxfer_zoo::pretrained(&tiny_resnet_entry(repo), &options, &Device::Cpu).unwrap_err().to_string();
    let fix = format!("delete it and the blob it links to ({}), then run `medxfer-zoo fetch {repo}`", blob.display());
    assert!(error.contains(&path.display().to_string()) && error.contains(&fix), "{error}");
    // As it says.
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&blob).unwrap();
    assert_eq!(std::fs::read(hub_file(repo, WEIGHTS_FILE, &options).unwrap()).unwrap(), body);
    medxfer_zoo::pretrained(&tiny_resnet_entry(repo), &options, &Device::Cpu).unwrap();
}

#[test]
fn processes_starting_together_on_a_cold_cache_wait_for_one_download() {
    let cache = tempfile::tempdir().unwrap();
    let body = std::fs::read(fixtures().join("resnet_basic_min.safetensors")).unwrap();
    // The download takes about 7 s: longer than hf-hub's own 5 s wait for its lock.
    let (endpoint, _) = serve(body.clone(), 0, std::time::Duration::from_millis(700));
    let retry =
        HubRetry { attempts: 2, first_delay: std::time::Duration::from_millis(200), wait_for_others: std::time::Duration::from_secs(60) };
    let options = online(cache.path(), endpoint, retry);
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let options = options.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(100 * i));
                hub_file("timm/cold.test", WEIGHTS_FILE, &options)
            })
        })
        .collect();
    for worker in workers {
        let path = worker.join().unwrap().unwrap();
        assert_eq!(std::fs::read(path).unwrap(), body);
    }
}

/// A hub stand-in that answers every request with `status` (and counts them).
fn serve_status(status: &'static str) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
        }
    });
    (endpoint, served)
}

#[test]
fn a_gated_or_missing_repo_is_said_so_at_once() {
    let cache = tempfile::tempdir().unwrap();
    let retry =
        HubRetry { attempts: 5, first_delay: std::time::Duration::from_millis(10), wait_for_others: std::time::Duration::from_secs(5) };
    let (endpoint, served) = serve_status("401 Unauthorized");
    let error = hub_file("MahmoodLab/UNI", WEIGHTS_FILE, &online(cache.path(), endpoint, retry)).unwrap_err().to_string();
    assert!(error.contains("gated") && error.contains("https://huggingface.co/MahmoodLab/UNI") && error.contains("HF_TOKEN"), "{error}");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1, "not retried");
    let (endpoint, served) = serve_status("404 Not Found");
    let error = hub_file("timm/no_such_model", WEIGHTS_FILE, &online(cache.path(), endpoint, retry)).unwrap_err().to_string();
    assert!(error.contains("no such repo or file") && error.contains("timm/no_such_model"), "{error}");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1, "not retried");
    // What cannot be a repo id is refused without asking the hub (a typo was retried as a
    // failing download).
    let (endpoint, served) = serve_status("404 Not Found");
    for typo in ["timm/resnet50/a1_in1k", "timm/", "/resnet50", "timm/resnet 50", "timm/../x"] {
        let error = hub_file(typo, WEIGHTS_FILE, &online(cache.path(), endpoint.clone(), retry)).unwrap_err().to_string();
        assert!(error.contains(typo) && error.contains("not a hub repo id (owner/name"), "{error}");
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0);
    // A download failing for the network's sake says how to fail at once on an offline machine.
    let (endpoint, _) = serve_status("503 Service Unavailable");
    let error = hub_file("timm/down.test", WEIGHTS_FILE, &online(cache.path(), endpoint, HubRetry { attempts: 2, ..retry })).unwrap_err();
    assert!(error.to_string().contains("HF_HUB_OFFLINE=1"), "{error}");
}

#[test]
fn an_absent_interpolation_and_crop_pct_take_timm_s_defaults() {
    let entry = medxfer_zoo::entry_from_timm_config("someone/bare", r#"{"architecture": "resnet18", "num_classes": 10}"#).unwrap();
    // timm's resolve_data_config: bicubic, crop_pct 0.875 (224 / 0.875 = 256).
    assert_eq!((entry.preprocessing.interpolation.as_str(), entry.preprocessing.crop, entry.preprocessing.resize), ("bicubic", 224, 256));
}

/// A hub stand-in laid out as the real one answers: `/{repo}/resolve/main/{file}` redirects to
/// an absolute file address (`/cdn/{file}`, as the hub redirects LFS files to its CDN) with the
/// `x-linked-etag` and `x-repo-commit` headers; the file address answers Range requests. Files
/// not listed are a 404. When `drop_after` is set, the first download of the body that starts
/// at byte 0 closes the connection after that many bytes. Returns the endpoint and every Range
/// header the file address was asked with.
fn serve_repo(files: Vec<(&'static str, Vec<u8>)>, drop_after: Option<usize>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let endpoint = format!("http://{address}");
    let ranges = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let asked = ranges.clone();
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cdn = endpoint.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let (path, range) = read_request(&stream);
            let name = path.rsplit('/').next().unwrap_or("");
            let Some((_, body)) = files.iter().find(|(file, _)| *file == name) else {
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            };
            if path.contains("/resolve/main/") {
                let head = format!(
                    "HTTP/1.1 302 Found\r\nlocation: {cdn}/cdn/{name}\r\nx-linked-etag: \"etag-{name}\"\r\nx-repo-commit: feedbeef\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes());
                continue;
            }
            asked.lock().unwrap().push(range.clone().unwrap_or_default());
            let size = body.len();
            let (start, end) = requested_bytes(range.as_deref(), size);
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {start}-{}/{size}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                end - 1,
                end - start
            );
            let _ = stream.write_all(head.as_bytes());
            let cut = match drop_after {
                Some(bytes) if start == 0 && end > 1 && !dropped.swap(true, std::sync::atomic::Ordering::SeqCst) => start + bytes,
                _ => end,
            };
            let _ = stream.write_all(&body[start..cut]);
            // Dropping the stream closes the connection, mid-file when cut < end.
        }
    });
    (endpoint, ranges)
}

#[test]
fn a_download_dropped_mid_file_resumes_where_it_stopped() {
    let cache = tempfile::tempdir().unwrap();
    let body = std::fs::read(fixtures().join("vit/gigapath_like.safetensors")).unwrap();
    let (endpoint, ranges) = serve_repo(vec![("model.safetensors", body.clone())], Some(100_000));
    let retry =
        HubRetry { attempts: 3, first_delay: std::time::Duration::from_millis(20), wait_for_others: std::time::Duration::from_secs(5) };
    let path = hub_file("prov-gigapath/tiny", WEIGHTS_FILE, &online(cache.path(), endpoint, retry)).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body, "the file is whole");
    assert!(path.ends_with("snapshots/feedbeef/model.safetensors"), "{}", path.display());
    let ranges = ranges.lock().unwrap().clone();
    assert!(ranges.contains(&"100000-".to_string()), "the second request resumed at the cut: {ranges:?}");
}

#[test]
fn a_repo_with_only_a_pickle_and_a_transformers_config_is_a_backbone() {
    let cache = tempfile::tempdir().unwrap();
    let folder = fixtures().join("vit/hf_dinov2_registers");
    let (endpoint, _) = serve_repo(
        vec![
            ("config.json", std::fs::read(folder.join("config.json")).unwrap()),
            ("pytorch_model.bin", std::fs::read(folder.join("pytorch_model.bin")).unwrap()),
        ],
        None,
    );
    let retry =
        HubRetry { attempts: 2, first_delay: std::time::Duration::from_millis(20), wait_for_others: std::time::Duration::from_secs(5) };
    let options = online(cache.path(), endpoint, retry);
    let registry = medxfer_zoo::Registry::load_default().unwrap();
    let entry = registry.resolve("someone/dinov2-registers", &options).unwrap();
    // No preprocessor_config.json (a 404): ImageNet's statistics at the model's size.
    assert_eq!((entry.preprocessing.mean, entry.preprocessing.crop), ([0.485, 0.456, 0.406], 32));
    let path = medxfer_zoo::weights_file(&entry, &options).unwrap();
    assert!(path.ends_with("pytorch_model.bin"), "model.safetensors is a 404, the pickle is next: {}", path.display());
    let model = medxfer_zoo::pretrained(&entry, &options, &Device::Cpu).unwrap();
    let reference = candle_core::safetensors::load(fixtures().join("vit/hf_dinov2_registers_ref.safetensors"), &Device::Cpu).unwrap();
    let features = model.features(&reference["input"], false).unwrap();
    let difference = common::max_abs_difference(features, &reference["features"]);
    assert!(difference < 1e-4, "{difference}");
    // Offline afterwards: the cached pickle is found without asking the hub for the others.
    let offline = HubOptions { offline: true, ..options };
    assert_eq!(medxfer_zoo::weights_file(&entry, &offline).unwrap(), path);
}
