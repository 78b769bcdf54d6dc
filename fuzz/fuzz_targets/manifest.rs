//! Fuzz target: the top-level object of a cache (OCI image manifest, OCI index, Docker manifest
//! list) as the importer reads it, with each media type a backend may report, then written back
//! in every form and read again.
#![no_main]

use cache_core::RawIndex;
use cache_core::descriptor::media_type;
use cache_core::manifest::{self, ManifestForm};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let reported = match choice % 4 {
        0 => None,
        1 => Some(media_type::OCI_MANIFEST),
        2 => Some(media_type::OCI_INDEX),
        _ => Some(media_type::DOCKER_LIST),
    };
    let raw = RawIndex::new(reported.map(str::to_owned), bytes.to_vec());
    let Ok(cache) = manifest::read(&raw) else {
        return;
    };
    for form in [
        ManifestForm::ImageManifest,
        ManifestForm::OciIndex,
        ManifestForm::DockerList,
    ] {
        let written = manifest::write(form, &cache.config, &cache.layers);
        let back = manifest::read(&written).expect("a written manifest reads back");
        assert_eq!(back.config, cache.config);
        assert_eq!(back.layers.len(), cache.layers.len());
    }
});
