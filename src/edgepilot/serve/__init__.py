"""The model server: a model repository served over KServe v2 (Open Inference Protocol) and TF Serving REST."""
