//! REST inputs: the register/login body and the history page's query string.
#![no_main]
use actix_web::web::Query;
use huddle_gateway::api::{Credentials, PageQuery};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(credentials) = serde_json::from_slice::<Credentials>(data) {
        let _ = huddle_domain::Username::parse(&credentials.username);
        let _ = huddle_domain::validate_password(&credentials.password);
    }
    if let Ok(query) = std::str::from_utf8(data) {
        let _ = Query::<PageQuery>::from_query(query);
    }
});
