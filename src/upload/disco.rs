//! What the upload service's disco#info says (XEP-0363 §2, Example 2): the `store/file`
//! identity, the feature, and the size limit as the `max-file-size` field of a form whose
//! FORM_TYPE is the feature, which clients read before offering a file.

use super::slot::NS_UPLOAD;
use crate::xml::ns::{DATA as NS_DATA, DISCO_INFO as NS_DISCO_INFO};
use crate::xml::Element;

/// The `<query xmlns='http://jabber.org/protocol/disco#info'/>` of the service's result.
pub fn info(max_file_bytes: u64) -> Element {
    let field = |var: &str, value: &str| {
        let f = Element::new("field", NS_DATA).with_attr("var", var);
        let f = if var == "FORM_TYPE" {
            f.with_attr("type", "hidden")
        } else {
            f
        };
        f.with_child(Element::new("value", NS_DATA).with_text(value))
    };
    Element::new("query", NS_DISCO_INFO)
        .with_child(
            Element::new("identity", NS_DISCO_INFO)
                .with_attr("category", "store")
                .with_attr("type", "file")
                .with_attr("name", "HTTP File Upload"),
        )
        .with_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", NS_DISCO_INFO))
        .with_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", NS_UPLOAD))
        .with_child(
            Element::new("x", NS_DATA)
                .with_attr("type", "result")
                .with_child(field("FORM_TYPE", NS_UPLOAD))
                .with_child(field("max-file-size", &max_file_bytes.to_string())),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disco_info_names_the_store_the_feature_and_the_size_limit() {
        let q = info(104_857_600);
        let id = q.child("identity", NS_DISCO_INFO).unwrap();
        assert_eq!(id.attr("category"), Some("store"));
        assert_eq!(id.attr("type"), Some("file"));
        assert!(q
            .children()
            .any(|f| f.name == "feature" && f.attr("var") == Some(NS_UPLOAD)));
        let form = q.child("x", NS_DATA).unwrap();
        let value = |var: &str| {
            form.children()
                .find(|f| f.attr("var") == Some(var))
                .and_then(|f| f.child("value", NS_DATA))
                .map(|v| v.text())
        };
        assert_eq!(value("FORM_TYPE").as_deref(), Some(NS_UPLOAD));
        assert_eq!(value("max-file-size").as_deref(), Some("104857600"));
    }
}
