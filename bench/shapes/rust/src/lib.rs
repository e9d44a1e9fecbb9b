//! The Rust guest of the contract-shape bench: reads two of the request's
//! headers and its path, in each shape, and answers two header sets.

wit_bindgen::generate!({ path: "../wit", world: "shapes" });

use exports::weir::shapes::guest::{Changes, Guest, Request};
use weir::shapes::lazy;

struct Shapes;

fn answer(key: Option<&str>, ua: Option<&str>, path: &str) -> Changes {
    let ua_bytes = ua.map_or(0, str::len) + path.len();
    Changes {
        set_headers: vec![
            ("x-client".into(), key.unwrap_or("anonymous").into()),
            ("x-ua-bytes".into(), ua_bytes.to_string()),
        ],
    }
}

impl Guest for Shapes {
    fn interest() -> Vec<String> {
        vec!["x-api-key".into(), "user-agent".into()]
    }

    fn on_request(req: Request) -> Changes {
        let (mut key, mut ua) = (None, None);
        for (name, value) in &req.headers {
            match name.as_str() {
                "x-api-key" if key.is_none() => key = Some(value.as_str()),
                "user-agent" if ua.is_none() => ua = Some(value.as_str()),
                _ => continue,
            }
            if key.is_some() && ua.is_some() {
                break;
            }
        }
        answer(key, ua, &req.path)
    }

    fn on_request_lazy(req: &lazy::Request) -> Changes {
        let key = req.header("x-api-key");
        let ua = req.header("user-agent");
        answer(key.as_deref(), ua.as_deref(), &req.path())
    }
}

export!(Shapes);
