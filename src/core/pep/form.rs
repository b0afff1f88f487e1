//! XEP-0004 data forms, as much as PEP needs: reading a submitted form's `FORM_TYPE` and field
//! values (publish-options, node configuration, the extended disco#info forms of XEP-0115),
//! and writing a form back.

use crate::xml::Element;

pub const NS_DATA: &str = "jabber:x:data";

/// One field: its `var` and its values, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub var: String,
    pub values: Vec<String>,
}

/// A parsed `<x xmlns='jabber:x:data'/>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    /// The `type` attribute (`form`, `submit`, `result`, `cancel`).
    pub type_: String,
    /// The value of the hidden `FORM_TYPE` field, if any (XEP-0068).
    pub form_type: Option<String>,
    /// Every other field with a `var`.
    pub fields: Vec<Field>,
}

impl Form {
    /// Reads a form; `None` when `el` is not a data form.
    pub fn parse(el: &Element) -> Option<Form> {
        if el.name != "x" || el.ns != NS_DATA {
            return None;
        }
        let mut form = Form {
            type_: el.attr("type").unwrap_or("form").to_owned(),
            ..Form::default()
        };
        for f in el
            .children()
            .filter(|c| c.name == "field" && c.ns == NS_DATA)
        {
            let Some(var) = f.attr("var") else { continue };
            let values: Vec<String> = f
                .children()
                .filter(|v| v.name == "value" && v.ns == NS_DATA)
                .map(Element::text)
                .collect();
            if var == "FORM_TYPE" {
                form.form_type = values.into_iter().next();
            } else {
                form.fields.push(Field {
                    var: var.to_owned(),
                    values,
                });
            }
        }
        Some(form)
    }

    /// A form of `type_` with a hidden `FORM_TYPE`, to fill with [`Form::with_field`].
    pub fn new(type_: &str, form_type: &str) -> Form {
        Form {
            type_: type_.to_owned(),
            form_type: Some(form_type.to_owned()),
            fields: Vec::new(),
        }
    }

    /// Builder form: adds a single-valued field.
    pub fn with_field(mut self, var: &str, value: impl Into<String>) -> Form {
        self.fields.push(Field {
            var: var.to_owned(),
            values: vec![value.into()],
        });
        self
    }

    /// The form as an element.
    pub fn to_element(&self) -> Element {
        let mut x = Element::new("x", NS_DATA).with_attr("type", &self.type_);
        let value = |v: &str| Element::new("value", NS_DATA).with_text(v);
        if let Some(t) = &self.form_type {
            x = x.with_child(
                Element::new("field", NS_DATA)
                    .with_attr("var", "FORM_TYPE")
                    .with_attr("type", "hidden")
                    .with_child(value(t)),
            );
        }
        for f in &self.fields {
            let mut field = Element::new("field", NS_DATA).with_attr("var", &f.var);
            for v in &f.values {
                field = field.with_child(value(v));
            }
            x = x.with_child(field);
        }
        x
    }
}
