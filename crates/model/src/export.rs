//! [`Graph`] → ONNX (opset 13) export, so builder networks can be fed to any ONNX tool.

use crate::ModelError;
use crate::ir::{Graph, Op, Pool, QParam};
use crate::proto::*;
use crate::tensor::Tensor;
use prost::Message;
use std::collections::HashSet;

/// The opset version tessera writes.
pub const EXPORT_OPSET: i64 = 13;

fn tensor_proto(name: &str, t: &Tensor) -> TensorProto {
    TensorProto {
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: data_type::FLOAT,
        name: name.to_string(),
        raw_data: t.data().iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INTS,
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INT,
        i: v,
        ..Default::default()
    }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::FLOAT,
        f: v,
        ..Default::default()
    }
}

fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| Dimension {
                            dim_value: Some(d as i64),
                            dim_param: None,
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

fn int64s(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![v.len() as i64],
        data_type: data_type::INT64,
        name: name.to_string(),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

/// A scalar scale and a scalar uint8/int8 zero point of `q`, as initializers named `{pfx}_s`
/// and `{pfx}_z`; returns their names.
fn qparam_inits(inits: &mut Vec<TensorProto>, pfx: &str, q: &QParam) -> [String; 2] {
    let (s, z) = (format!("{pfx}_s"), format!("{pfx}_z"));
    inits.push(TensorProto {
        data_type: data_type::FLOAT,
        name: s.clone(),
        raw_data: q.scale.to_le_bytes().to_vec(),
        ..Default::default()
    });
    inits.push(TensorProto {
        data_type: if q.signed() {
            data_type::INT8
        } else {
            data_type::UINT8
        },
        name: z.clone(),
        // In range by construction (QParam::new); int8 as its two's-complement byte.
        raw_data: vec![q.zero_point as u8],
        ..Default::default()
    });
    [s, z]
}

/// An int8 model's weights as a DequantizeLinear of their integers (int8 where they fit, int32
/// otherwise) by their per-channel (axis 0) or per-tensor scales; returns the dequantized name.
fn quantized_weight(
    inits: &mut Vec<TensorProto>,
    nodes: &mut Vec<NodeProto>,
    pfx: &str,
    w: &Tensor,
    scales: &[f32],
    node: &str,
) -> Result<String, ModelError> {
    let rows = w.shape().first().copied().unwrap_or(1).max(1);
    let per_row = w.len() / rows;
    let mut q = Vec::with_capacity(w.len());
    for (i, &v) in w.data().iter().enumerate() {
        let s = if scales.len() == 1 {
            scales.first()
        } else {
            scales.get(i / per_row.max(1))
        };
        let s = f64::from(s.copied().unwrap_or(1.0));
        let r = (f64::from(v) / s).round();
        if (f64::from(v) / s - r).abs() > 1e-3 || r.abs() > f64::from(i32::MAX) {
            return Err(ModelError::Invalid(format!(
                "node '{node}': weight {v} is not an integer multiple of its scale {s}"
            )));
        }
        q.push(r as i32);
    }
    let int8 = q.iter().all(|v| (-128..=127).contains(v));
    let (wq, ws, wz, out) = (
        format!("{pfx}_Wq"),
        format!("{pfx}_Ws"),
        format!("{pfx}_Wz"),
        format!("{pfx}_W"),
    );
    let dims: Vec<i64> = w.shape().iter().map(|&d| d as i64).collect();
    inits.push(TensorProto {
        dims,
        data_type: if int8 {
            data_type::INT8
        } else {
            data_type::INT32
        },
        name: wq.clone(),
        raw_data: if int8 {
            q.iter().map(|&v| v as i8 as u8).collect()
        } else {
            q.iter().flat_map(|v| v.to_le_bytes()).collect()
        },
        ..Default::default()
    });
    let sdims = if scales.len() == 1 {
        vec![]
    } else {
        vec![scales.len() as i64]
    };
    inits.push(TensorProto {
        dims: sdims.clone(),
        data_type: data_type::FLOAT,
        name: ws.clone(),
        raw_data: scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    });
    let mut input = vec![wq, ws];
    if int8 {
        inits.push(TensorProto {
            dims: sdims,
            data_type: data_type::INT8,
            name: wz.clone(),
            raw_data: vec![0; scales.len()],
            ..Default::default()
        });
        input.push(wz);
    }
    nodes.push(NodeProto {
        input,
        output: vec![out.clone()],
        name: format!("{pfx}_Wdq"),
        op_type: "DequantizeLinear".into(),
        attribute: if scales.len() == 1 {
            vec![]
        } else {
            vec![int("axis", 0)]
        },
        ..Default::default()
    });
    Ok(out)
}

fn window_attrs(p: &Pool) -> Vec<AttributeProto> {
    vec![
        ints("kernel_shape", &p.kernel),
        ints("strides", &p.strides),
        ints("pads", &p.pads),
        ints("dilations", &p.dilations),
        int("ceil_mode", i64::from(p.ceil_mode)),
    ]
}

/// Encode a graph as ONNX bytes.
pub fn export_model(g: &Graph) -> Result<Vec<u8>, ModelError> {
    g.validate()?;
    // Unique value names.
    let mut seen = HashSet::new();
    let names: Vec<String> = g
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let base = if v.name.is_empty() {
                format!("v{i}")
            } else {
                v.name.clone()
            };
            if seen.insert(base.clone()) {
                base
            } else {
                format!("{base}__{i}")
            }
        })
        .collect();
    // A Quantize node's output is written as QuantizeLinear then DequantizeLinear (QDQ), and
    // every consumer reads the dequantized name.
    let mut read = names.clone();
    for n in &g.nodes {
        if matches!(n.op, Op::Quantize(_))
            && let Some(r) = read.get_mut(n.output)
        {
            r.push_str("__dq");
        }
    }
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    for (k, n) in g.nodes.iter().enumerate() {
        let out = names[n.output].clone();
        let mut input: Vec<String> = n.inputs.iter().map(|&i| read[i].clone()).collect();
        let pfx = format!("{}_{k}", n.name);
        // A node written right after this one (a Quantize's DequantizeLinear).
        let mut after: Option<NodeProto> = None;
        let (op_type, attribute): (&str, Vec<AttributeProto>) = match &n.op {
            Op::Constant(t) => {
                inits.push(tensor_proto(&out, t));
                continue;
            }
            Op::Conv(c) => {
                match &c.weight_scales {
                    Some(sc) => input.push(quantized_weight(
                        &mut inits, &mut nodes, &pfx, &c.weight, sc, &n.name,
                    )?),
                    None => {
                        inits.push(tensor_proto(&format!("{pfx}_W"), &c.weight));
                        input.push(format!("{pfx}_W"));
                    }
                }
                if let Some(b) = &c.bias {
                    inits.push(tensor_proto(&format!("{pfx}_B"), b));
                    input.push(format!("{pfx}_B"));
                }
                let ws = c.weight.shape();
                let attrs = vec![
                    ints("kernel_shape", &ws[2..]),
                    ints("strides", &c.strides),
                    ints("pads", &c.pads),
                    ints("dilations", &c.dilations),
                    int("group", c.groups as i64),
                ];
                ("Conv", attrs)
            }
            Op::Dense(d) => {
                match &d.weight_scales {
                    Some(sc) => input.push(quantized_weight(
                        &mut inits, &mut nodes, &pfx, &d.weight, sc, &n.name,
                    )?),
                    None => {
                        inits.push(tensor_proto(&format!("{pfx}_W"), &d.weight));
                        input.push(format!("{pfx}_W"));
                    }
                }
                if let Some(b) = &d.bias {
                    inits.push(tensor_proto(&format!("{pfx}_B"), b));
                    input.push(format!("{pfx}_B"));
                }
                ("Gemm", vec![int("transB", 1)])
            }
            Op::MatMul => ("MatMul", vec![]),
            Op::Gemm(gm) => (
                "Gemm",
                vec![
                    float("alpha", gm.alpha),
                    float("beta", gm.beta),
                    int("transA", i64::from(gm.trans_a)),
                    int("transB", i64::from(gm.trans_b)),
                ],
            ),
            Op::Binary {
                op,
                constant,
                constant_first,
            } => {
                if let Some(c) = constant {
                    let cname = format!("{pfx}_C");
                    inits.push(tensor_proto(&cname, c));
                    if *constant_first {
                        input.insert(0, cname);
                    } else {
                        input.push(cname);
                    }
                }
                (op.onnx_name(), vec![])
            }
            Op::Relu => ("Relu", vec![]),
            Op::MaxPool(p) => ("MaxPool", window_attrs(p)),
            Op::AvgPool(p) => {
                // AveragePool has no dilations before opset 19.
                if p.dilations != [1, 1] {
                    return Err(ModelError::Invalid(format!(
                        "node '{}': a dilated average pool cannot be written at opset {EXPORT_OPSET}",
                        n.name
                    )));
                }
                let mut a = window_attrs(p);
                a.retain(|x| x.name != "dilations");
                a.push(int("count_include_pad", i64::from(p.count_include_pad)));
                ("AveragePool", a)
            }
            Op::GlobalAvgPool => ("GlobalAveragePool", vec![]),
            Op::Reshape => {
                let shape = g.shape(n.output);
                let sname = format!("{pfx}_shape");
                inits.push(TensorProto {
                    dims: vec![shape.len() as i64],
                    data_type: data_type::INT64,
                    name: sname.clone(),
                    int64_data: shape.iter().map(|&d| d as i64).collect(),
                    ..Default::default()
                });
                input.push(sname);
                ("Reshape", vec![])
            }
            Op::Softmax { axis, coerce_2d } => {
                let rank = n.inputs.first().map(|&i| g.shape(i).len()).unwrap_or(0);
                if *coerce_2d && *axis + 1 != rank {
                    return Err(ModelError::Invalid(format!(
                        "node '{}': an opset<13 Softmax over several axes cannot be written at opset {EXPORT_OPSET}",
                        n.name
                    )));
                }
                ("Softmax", vec![int("axis", *axis as i64)])
            }
            Op::Concat { axis } => ("Concat", vec![int("axis", *axis as i64)]),
            Op::Transpose { perm } => ("Transpose", vec![ints("perm", perm)]),
            Op::Pad { pads, value } => {
                let pname = format!("{pfx}_pads");
                inits.push(TensorProto {
                    dims: vec![pads.len() as i64],
                    data_type: data_type::INT64,
                    name: pname.clone(),
                    int64_data: pads.iter().map(|&d| d as i64).collect(),
                    ..Default::default()
                });
                let vname = format!("{pfx}_value");
                inits.push(tensor_proto(&vname, &Tensor::new(vec![], vec![*value])?));
                input.push(pname);
                input.push(vname);
                ("Pad", vec![])
            }
            Op::Clip { min, max } => {
                for (suffix, v) in [("min", *min), ("max", *max)] {
                    let cname = format!("{pfx}_{suffix}");
                    inits.push(tensor_proto(&cname, &Tensor::new(vec![], vec![v])?));
                    input.push(cname);
                }
                ("Clip", vec![])
            }
            Op::Lrn {
                size,
                alpha,
                beta,
                bias,
            } => (
                "LRN",
                vec![
                    int("size", *size as i64),
                    float("alpha", *alpha),
                    float("beta", *beta),
                    float("bias", *bias),
                ],
            ),
            Op::Sigmoid => ("Sigmoid", vec![]),
            Op::Tanh => ("Tanh", vec![]),
            Op::Quantize(q) => {
                let [sn, zn] = qparam_inits(&mut inits, &pfx, q);
                input.extend([sn.clone(), zn.clone()]);
                after = Some(NodeProto {
                    input: vec![out.clone(), sn, zn],
                    output: vec![format!("{out}__dq")],
                    name: format!("{pfx}_dq"),
                    op_type: "DequantizeLinear".into(),
                    ..Default::default()
                });
                ("QuantizeLinear", vec![])
            }
            Op::Slice { axis, start, end } => {
                for (suffix, v) in [("starts", *start), ("ends", *end), ("axes", *axis)] {
                    let cname = format!("{pfx}_{suffix}");
                    inits.push(int64s(&cname, &[v as i64]));
                    input.push(cname);
                }
                ("Slice", vec![])
            }
        };
        nodes.push(NodeProto {
            input,
            output: vec![out],
            name: n.name.clone(),
            op_type: op_type.into(),
            attribute,
            ..Default::default()
        });
        nodes.extend(after);
    }
    let graph = GraphProto {
        node: nodes,
        name: g.name.clone(),
        initializer: inits,
        input: g
            .inputs
            .iter()
            .map(|&i| value_info(&names[i], g.shape(i)))
            .collect(),
        output: g
            .outputs
            .iter()
            .map(|&i| value_info(&read[i], g.shape(i)))
            .collect(),
        value_info: vec![],
    };
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: EXPORT_OPSET,
        }],
        producer_name: "tessera".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: String::new(),
        graph: Some(graph),
    };
    Ok(model.encode_to_vec())
}
