"""sim/build.py's strip_zero_memory_init on Verilog written the way Yosys writes it."""

from gradsync.sim.build import strip_zero_memory_init

ZERO = """\
  reg [15:0] grad [3:0];
  initial begin
    grad[0] = 16'h0000;
    grad[1] = 16'h0000;
    grad[2] = 16'h0000;
    grad[3] = 16'h0000;
  end
"""
ESCAPED = """\
  reg [31:0] \\buf  [1:0];
  initial begin
    \\buf [0] = 32'd0;
    \\buf [1] = 32'd0;
  end
"""
NONZERO = """\
  reg [7:0] lut [1:0];
  initial begin
    lut[0] = 8'h00;
    lut[1] = 8'h2a;
  end
"""
OTHER = """\
  initial begin
    x = 1'h0;
  end
  always @(posedge clk) begin
    if (we) grad[addr] <= 16'h0000;
  end
"""


def test_zero_only_memory_initialisers_are_removed():
    text, blocks = strip_zero_memory_init("module m;\n" + ZERO + ESCAPED + "endmodule\n")
    assert blocks == 2
    assert text == "module m;\n  reg [15:0] grad [3:0];\n  reg [31:0] \\buf  [1:0];\nendmodule\n"


def test_initialisers_with_a_nonzero_word_and_other_code_are_kept():
    source = "module m;\n" + NONZERO + OTHER + "endmodule\n"
    assert strip_zero_memory_init(source) == (source, 0)
