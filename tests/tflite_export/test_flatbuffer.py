from tflite_export.flatbuffer import float_ops, list_ops, op_counts


def test_int8_graph_ops_and_tensor_types(int8_tflite):
    data = open(int8_tflite.path, "rb").read()
    ops = list_ops(data)
    assert [op["op"] for op in ops] == ["CONV_2D", "MAX_POOL_2D", "CONV_2D", "MAX_POOL_2D", "RESHAPE",
                                        "FULLY_CONNECTED", "FULLY_CONNECTED"]
    conv = ops[0]
    assert [dtype for _, dtype in conv["inputs"]] == ["int8", "int8", "int32"]  # input, kernel, bias
    assert "conv1" in conv["outputs"][0][0]  # tensor names carry the Keras layer names
    assert op_counts(data) == {"CONV_2D": 2, "MAX_POOL_2D": 2, "RESHAPE": 1, "FULLY_CONNECTED": 2}
    assert float_ops(data) == []


def test_float_ops_lists_every_op_of_a_float_model(trained_cnn, tmp_path):
    from tflite_export import to_tflite

    f32 = to_tflite(trained_cnn, tmp_path / "f32.tflite", "float32")
    assert len(float_ops(open(f32.path, "rb").read())) == 7  # every op of a float model
