# Builds TARGET in BUILD_DIR and succeeds only if the build fails and its output matches every regex in EXPECT
# (separated by "|;|").
string(REPLACE "|;|" ";" expectations "${EXPECT}")
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${TARGET}
                RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
if(result EQUAL 0)
  message(FATAL_ERROR "${TARGET} compiled, but it must not:\n${output}")
endif()
foreach(expected IN LISTS expectations)
  if(NOT output MATCHES "${expected}")
    message(FATAL_ERROR "${TARGET} failed to compile, but without the message `${expected}`:\n${output}")
  endif()
endforeach()
message(STATUS "${TARGET} fails to compile as it must")
