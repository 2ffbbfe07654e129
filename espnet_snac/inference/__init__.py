"""Using a trained SNAC: streaming decoder, code files, tokenizer API, ONNX export."""
