// A model with an op the CPU target cannot run (a call).
module {
  func.func private @helper(tensor<?x128xf32>) -> tensor<?x128xf32>
  func.func @forward(%ids: tensor<?xi32>, %pos: tensor<?xi64>, %h: tensor<?x128xbf16>) -> (tensor<?x128xf32>, tensor<?x128xbf16>) {
    %f = melt.convert %h : tensor<?x128xbf16> -> tensor<?x128xf32>
    %g = func.call @helper(%f) : (tensor<?x128xf32>) -> tensor<?x128xf32>
    return %g, %h : tensor<?x128xf32>, tensor<?x128xbf16>
  }
}
