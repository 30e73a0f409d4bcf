// A model with an op the CPU target cannot run yet (activation quantization).
module {
  func.func @forward(%ids: tensor<?xi32>, %pos: tensor<?xi64>, %h: tensor<?x128xbf16>) -> (tensor<?x128xf32>, tensor<?x128xbf16>) {
    %q, %s = melt.quantize %h {block = array<i64: 1, 128>} : tensor<?x128xbf16> -> tensor<?x128xf8E4M3FN>, tensor<?x1xf32>
    %f = melt.convert %h : tensor<?x128xbf16> -> tensor<?x128xf32>
    return %f, %h : tensor<?x128xf32>, tensor<?x128xbf16>
  }
}
