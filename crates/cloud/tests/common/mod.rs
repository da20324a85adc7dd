//! What the provider's tests share: a state directory whose provider destroys all it
//! recorded when dropped, also when the test failed.
#![allow(dead_code)]

use std::path::Path;

use korvet_cloud::local::default_pool;
use korvet_cloud::LocalProvider;

/// Destroys everything recorded in the state directory, also when the test failed.
pub(crate) struct Cleanup {
    dir: Option<tempfile::TempDir>,
}

impl Cleanup {
    pub(crate) fn new() -> Cleanup {
        Cleanup {
            dir: Some(tempfile::tempdir().unwrap()),
        }
    }
    pub(crate) fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        // Its own runtime on its own thread: Drop may run inside the test's runtime.
        let path = dir.path().to_path_buf();
        let result = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let provider = LocalProvider::open(&path, default_pool())?;
                provider.destroy_all().await
            })
        })
        .join();
        if !matches!(result, Ok(Ok(()))) {
            eprintln!("cleanup of {} failed: {result:?}", dir.path().display());
        }
    }
}
