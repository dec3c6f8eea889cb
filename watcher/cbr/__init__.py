"""The Huawei Cloud CBR API: models, errors, auth and the HTTP client."""
