package cuda

import "strings"

// addOnePTX is a hand-written kernel: data[i] += inc for i < n, with
// parameters of mixed sizes (u64, u32, u32) to exercise Args packing.
const addOnePTX = `
.version 7.0
.target sm_80
.address_size 64

.visible .entry add_one(
	.param .u64 p_data,
	.param .u32 p_n,
	.param .u32 p_inc
)
{
	.reg .pred %p<2>;
	.reg .b32 %r<8>;
	.reg .b64 %rd<5>;

	ld.param.u64 %rd1, [p_data];
	ld.param.u32 %r1, [p_n];
	ld.param.u32 %r6, [p_inc];
	mov.u32 %r2, %ctaid.x;
	mov.u32 %r3, %ntid.x;
	mov.u32 %r4, %tid.x;
	mad.lo.s32 %r5, %r2, %r3, %r4;
	setp.ge.u32 %p1, %r5, %r1;
	@%p1 bra DONE;
	cvta.to.global.u64 %rd2, %rd1;
	mul.wide.u32 %rd3, %r5, 4;
	add.s64 %rd4, %rd2, %rd3;
	ld.global.u32 %r7, [%rd4];
	add.s32 %r7, %r7, %r6;
	st.global.u32 [%rd4], %r7;
DONE:
	ret;
}
`

// addOnePDLPTX is add_one for programmatic dependent launch (sm_90): it lets the next kernel launch at once
// and waits for the previous kernel's writes before it reads.
var addOnePDLPTX = strings.NewReplacer(
	".version 7.0", ".version 7.8",
	".target sm_80", ".target sm_90",
	"add_one(", "add_one_pdl(",
	"\tld.param.u64 %rd1", "\tgriddepcontrol.launch_dependents;\n\tgriddepcontrol.wait;\n\tld.param.u64 %rd1",
).Replace(addOnePTX)
